"""Progress on real jobs: off a terminal (SLURM, nohup, CI) one plain line every `log_every` steps/updates with the
step, the key numbers, elapsed time and ETA, never a carriage return; warnings (tether's, Python's, transformers')
as lines of their own, through the bar on a terminal; transformers' and datasets' own bars and info logs off for the
run and restored after."""

from __future__ import annotations

import io
import logging
import math
import re
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from _tiny import gpt2_lm, gpt2_tok, toy_sft, write_jsonl  # noqa: E402

from tether import console  # noqa: E402
from tether.console import LineProgress, progress, quiet_libraries  # noqa: E402

LINE = re.compile(r"^tether: (?P<desc>\w+) (?P<unit>\w+) (?P<n>\d+)/(?P<total>\d+)(?P<nums>( \S+=\S+)*) "
                  r"elapsed (?P<elapsed>\d\d:\d\d) eta (?P<eta>\d\d:\d\d)$")


def _progress_lines(err: str) -> list[re.Match]:
    return [m for m in map(LINE.match, err.splitlines()) if m]


@pytest.mark.parametrize("total,every", [(10, 3), (12, 4), (1, 5), (7, 1)])
def test_line_progress_writes_ceil_total_over_every_lines(capsys, total, every):
    assert not isinstance(progress(total=total, desc="eval"), LineProgress)  # only a stage's run has lines
    bar = progress(total=total, desc="sft", every=every)
    assert isinstance(bar, LineProgress)
    for i in range(total):
        bar.set_postfix({"loss": f"{1 / (i + 1):.3f}"}, refresh=False)
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    lines = _progress_lines(err)
    assert len(lines) == len(err.splitlines()) == math.ceil(total / every)
    assert [int(m["n"]) for m in lines] == sorted({*range(every, total + 1, every), total})
    assert all(m["total"] == str(total) and m["unit"] == "step" for m in lines)
    assert lines[-1]["nums"] == f" loss={1 / total:.3f}" and lines[-1]["eta"] == "00:00"


def test_a_resumed_run_prints_only_the_steps_after_its_start(capsys):
    bar = progress(total=10, desc="ppo", unit="update", every=4)
    bar.n = bar.initial = 6
    bar.refresh()
    for _ in range(4):
        bar.update(1)
    assert [int(m["n"]) for m in _progress_lines(capsys.readouterr().err)] == [8, 10]


def test_sft_off_a_terminal_logs_one_line_every_log_every_steps(tmp_path, capfd):
    """A 12-step SFT run with log_every=5: lines at steps 5, 10 and 12, each with the loss, elapsed and ETA; a Python
    warning and a transformers warning mid-run are lines of their own; no carriage return anywhere."""
    from transformers.utils import logging as hf_logging

    from tether.algos import sft as sft_mod
    from tether.algos.sft import train_sft
    from tether.config.sft import SFTConfig

    tok = gpt2_tok()
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(24))
    cfg = SFTConfig(output_dir=str(tmp_path / "out"), train_file=str(train), eval_fraction=0.0, batch_size=2,
                    num_epochs=1, log_every=5, max_length=32, report_to=["none"])
    real_offline_step, calls = sft_mod.offline_step, []

    def offline_step(r, finite):  # warnings from inside the run, at step 7
        calls.append(1)
        if len(calls) == 7:
            warnings.warn("a library complains mid-run")
            hf_logging.get_logger("transformers.generation").warning("transformers says so mid-run")
        return real_offline_step(r, finite)

    sft_mod.offline_step = offline_step
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # transformers' default (an earlier CLI test may have left it at error)
    try:
        res = train_sft(cfg, model=gpt2_lm(len(tok) + 1), tokenizer=tok, progress=True)
    finally:
        sft_mod.offline_step = real_offline_step
        hf_logging.set_verbosity(level)
    assert res.steps == 12
    cap = capfd.readouterr()
    lines = _progress_lines(cap.err)
    assert [int(m["n"]) for m in lines] == [5, 10, 12] and all(m["desc"] == "sft" for m in lines)
    assert all(re.fullmatch(r" loss=\d+\.\d{4}", m["nums"]) for m in lines), [m.group(0) for m in lines]
    err = cap.err.splitlines()
    py = [i for i, line in enumerate(err) if "a library complains mid-run" in line]
    hf = [i for i, line in enumerate(err) if "transformers says so mid-run" in line]
    assert len(py) == 1 and err[py[0]].startswith("tether: warning: UserWarning: a library complains mid-run (")
    assert len(hf) == 1 and err[hf[0]].endswith("transformers says so mid-run")
    step5, step10 = (err.index(m.group(0)) for m in lines[:2])
    assert step5 < py[0] < step10 and step5 < hf[0] < step10
    assert "\r" not in cap.err and "\r" not in cap.out


def test_library_bars_and_info_logs_are_off_during_a_run_and_restored_after(tmp_path):
    import datasets
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    from tether.algos import sft as sft_mod
    from tether.algos.sft import train_sft
    from tether.config.sft import SFTConfig

    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    hf_level, ds_level = hf_logging.get_verbosity(), ds_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    ds_logging.set_verbosity_info()
    seen = []
    real = sft_mod.offline_step

    def offline_step(r, finite):
        seen.append((hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(),
                     hf_logging.get_verbosity(), ds_logging.get_verbosity(), warnings.showwarning))
        return real(r, finite)

    tok = gpt2_tok()
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(8))
    cfg = SFTConfig(output_dir=str(tmp_path / "out"), train_file=str(train), eval_fraction=0.0, batch_size=4,
                    num_epochs=1, max_length=32, report_to=["none"])
    sft_mod.offline_step = offline_step
    shown = warnings.showwarning
    try:
        train_sft(cfg, model=gpt2_lm(len(tok) + 1), tokenizer=tok, progress=False)
        assert seen and all(s[:4] == (False, False, logging.WARNING, logging.WARNING) for s in seen), seen
        assert all(s[4] is not shown for s in seen)
        assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == logging.INFO and ds_logging.get_verbosity() == logging.INFO
        assert warnings.showwarning is shown
    finally:
        sft_mod.offline_step = real
        hf_logging.set_verbosity(hf_level)
        ds_logging.set_verbosity(ds_level)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_warning_goes_through_the_bar(monkeypatch):
    """On a terminal the bar is tqdm's; a warning mid-run clears the bar's line first (the character before it is
    the carriage return of the clear), ends with a newline, and the bar is drawn again after it."""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert console.on_terminal()
    with quiet_libraries():
        bar = progress(total=4, desc="ppo", unit="update", every=1)
        assert not isinstance(bar, LineProgress)
        bar.update(2)
        warnings.warn("careful now")
        console.warn("an alarm fired")
        bar.update(2)
        bar.close()
    out = term.getvalue()
    for text in ("tether: warning: UserWarning: careful now (", "tether: warning: an alarm fired\n"):
        i = out.index(text)
        assert out[i - 1] == "\r" and out.index("\n", i) < out.find("ppo", i), out
    assert "ppo:  50%" in out


def test_rm_and_ppo_off_a_terminal_log_their_lines(tmp_path, capsys, gpt2_tok, make_llama):
    """RM: 10 steps, log_every=4 → steps 4, 8, 10 with the loss and accuracy; PPO: 3 updates, monitor.log_every=2 →
    updates 2 and 3 with score, KL and β. No carriage return."""
    from _tiny import gpt2_rm, toy_pairs

    from tether.algos.ppo_trainer import PPOTrainer
    from tether.algos.rm import train_rm
    from tether.config.ppo import PPOConfig
    from tether.config.rm import RMConfig

    tok = gpt2_tok
    pairs = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(20))
    cfg = RMConfig(output_dir=str(tmp_path / "rm"), train_file=str(pairs), eval_fraction=0.0, batch_size=2,
                   num_epochs=1, log_every=4, max_length=32, report_to="none")
    res = train_rm(cfg, model=gpt2_rm(len(tok) + 1), tokenizer=tok, progress=True)
    assert res.steps == 10
    err = capsys.readouterr().err
    lines = _progress_lines(err)
    assert [(m["desc"], int(m["n"]), int(m["total"])) for m in lines] == [("rm", 4, 10), ("rm", 8, 10), ("rm", 10, 10)]
    assert all(m["nums"] for m in lines) and "\r" not in err

    ppo = PPOConfig(output_dir=str(tmp_path / "ppo"), rollout_batch_size=2, micro_batch_size=2, response_length=4,
                    num_updates=3, num_ppo_epochs=1, monitor={"log_every": 2, "report_to": "none", "report": False,
                                                              "preflight": False})
    PPOTrainer(ppo, policy=make_llama(len(tok) + 1), tokenizer=tok, reward=lambda p, c: [float(len(x)) for x in c],
               prompts=["The movie was", "I think"]).train()
    err = capsys.readouterr().err
    lines = _progress_lines(err)
    assert [(m["desc"], m["unit"], int(m["n"])) for m in lines] == [("ppo", "update", 2), ("ppo", "update", 3)]
    assert all(re.search(r"score=\S+ kl=\S+ beta=\S+", m["nums"]) for m in lines) and "\r" not in err


def test_dpo_off_a_terminal_logs_its_lines_and_reports_to_its_trackers(tmp_path, capsys):
    """DPO: 8 steps, log_every=3 → steps 3, 6, 8; `report_to: [tensorboard]` gets the metrics.jsonl losses."""
    from _tiny import toy_pairs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tether.algos.dpo import train_dpo
    from tether.config.dpo import DPOConfig

    tok = gpt2_tok()
    train = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(32))
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), train_file=str(train), eval_fraction=0.0, batch_size=4,
                    log_every=3, max_length=32, checkpoint_every=0, report_to=["tensorboard"])
    train_dpo(cfg, model=gpt2_lm(len(tok) + 1), tokenizer=tok, progress=True)
    err = capsys.readouterr().err
    assert [(m["desc"], int(m["n"]), int(m["total"])) for m in _progress_lines(err)] == [
        ("dpo", 3, 8), ("dpo", 6, 8), ("dpo", 8, 8)]
    assert "\r" not in err
    acc = EventAccumulator(str(tmp_path / "dpo" / "tb"))
    acc.Reload()
    import json

    records = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert {e.step: e.value for e in acc.Scalars("loss")} == pytest.approx(losses, rel=1e-6)
