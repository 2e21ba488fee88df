"""`tether compare` end to end on a tiny task (a random Llama with the real GPT-2 tokenizer, a Python reward): two
methods × two seeds at a matched token budget, the report's files, seed-level intervals from ``evaluate_policies``,
and a re-invocation that reuses every finished run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tether.cli import main

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is", "The film", "Today"]


@pytest.fixture
def task(tmp_path, make_llama, gpt2_tok, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sft = tmp_path / "sft"
    make_llama(len(gpt2_tok) + 1).save_pretrained(sft)
    copy.deepcopy(gpt2_tok).save_pretrained(sft)
    for name, rows in (("train.jsonl", PROMPTS), ("eval.jsonl", PROMPTS[:4])):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    return [f"sft={sft}", "reward_fn=_compare_rewards:spaces", f"prompts={tmp_path / 'train.jsonl'}",
            f"eval_prompts={tmp_path / 'eval.jsonl'}"]


def test_compare_cli_two_methods_two_seeds_matched_budget_and_reuse(task, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *task, f"output_dir={out}", "methods=[ppo, grpo]", "seeds=[0, 1]", "num_updates=2",
            "completions_per_update=4", "method_options.grpo.samples_per_prompt=2", "ppo.stop_at_eos=false",
            "ppo.response_length=5", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.sample_every=0",
            "ppo.monitor.preflight=false", "ppo.monitor.tensorboard=false", "ppo.monitor.report=false",
            "eval_every=1", "eval_num_prompts=2", "num_prompts=4", "judges=[vader, textblob]"]
    assert main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert said.count(": training -> ") == 4
    rep = json.loads((out / "compare.json").read_text())
    for m in ("ppo", "grpo"):
        b = rep["methods"][m]["budget"]
        # the matched budget: 2 updates × 4 completions × 5 tokens per seed, sampled exactly without stop_at_eos
        assert b["sampled_tokens"] == [40] and b["completions"] == [8] and b["updates"] == [2]
        assert set(b["per_seed"]) == {"0", "1"}
        for seed in (0, 1):
            lines = (out / m / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["rollout/sampled_tokens"] for x in lines] == [20.0, 20.0]
        # seed-level intervals: each method went to evaluate_policies as the list of its seeds' final/
        assert rep["eval"]["policies"][m]["vader"]["n_runs"] == 2
        assert rep["methods"][m]["gain"]["vader"]["n_runs"] == [1, 2]
        assert rep["methods"][m]["gain"]["vader"]["n_prompts"] == 4
        f = rep["methods"][m]["frontier"]
        assert [p["update"] for p in f] == [0, 1, 2] and [p["n_seeds"] for p in f] == [2, 2, 2]
        assert set(rep["curves"][m]) == {"0", "1"} and len(rep["curves"][m]["0"]) == 2
        assert rep["methods"][m]["time_to_quality"]["reached"].endswith("/2")
    assert rep["resampled"] == "runs × prompts"
    assert rep["settings"]["evaluation"]["policies"]["grpo"] == [str(out / "grpo" / f"seed{s}" / "final")
                                                                   for s in (0, 1)]
    sft_rows = [json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(sft_rows) == 4 * 5  # SFT + 2 methods × 2 seeds, 4 prompts × 1 completion each
    md = (out / "compare.md").read_text()
    assert "| ppo |" in md and "| grpo |" in md and "vader gain over SFT" in md and "runs × prompts" in md
    html = (out / "frontier.html").read_text()
    assert "frontier-0" in html and "frontier-1" in html and '"grpo"' in html
    # the SFT baseline of the held-out curves: one per seed (same evaluation settings for both methods)
    assert len(json.loads((out / "sft_heldout.json").read_text())) == 2

    before = {m: (out / m / "seed1" / "metrics.jsonl").read_text() for m in ("ppo", "grpo")}
    assert main(argv) == 0, capsys.readouterr().err
    again = capsys.readouterr().out
    assert again.count("finished run reused") == 4 and ": training -> " not in again
    assert before == {m: (out / m / "seed1" / "metrics.jsonl").read_text() for m in ("ppo", "grpo")}


def test_an_interrupted_compare_continues(task, tmp_path, capsys, monkeypatch):
    """The second run's trainer fails (the first run is finished by then): no report is written; the next compare
    reuses the first run, trains the second, and only then evaluates."""
    import tether.compare as compare

    out = tmp_path / "cmp"
    argv = ["compare", *task, f"output_dir={out}", "methods=[rloo]", "seeds=[0, 1]", "num_updates=2",
            "completions_per_update=4", "method_options.rloo.samples_per_prompt=2", "ppo.response_length=4",
            "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.checkpoint_every=1", "ppo.sample_every=0",
            "ppo.monitor.preflight=false", "ppo.monitor.tensorboard=false", "ppo.monitor.report=false",
            "eval_every=2", "eval_num_prompts=2", "num_prompts=2", "judges=[vader]"]
    real = compare.TRAINERS["ppo"]
    calls = []

    def crash_on_second(sc):
        calls.append(sc.seed)
        if sc.seed == 1:
            raise RuntimeError("simulated crash")
        return real(sc)

    monkeypatch.setitem(compare.TRAINERS, "ppo", crash_on_second)
    assert main(argv) == 1
    assert "simulated crash" in capsys.readouterr().err and not (out / "compare.json").exists()
    # the finished run kept final/ and lost its checkpoints (one per update was written: checkpoint_every=1)
    seed0 = out / "rloo" / "seed0"
    assert (seed0 / "final" / "config.json").is_file() and not (seed0 / "checkpoints").exists()
    monkeypatch.setitem(compare.TRAINERS, "ppo", real)
    assert main([*argv, "keep_run_checkpoints=true"]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "1/2 rloo seed 0: finished run reused" in said and "2/2 rloo seed 1: training" in said
    assert json.loads((out / "compare.json").read_text())["methods"]["rloo"]["budget"]["updates"] == [2]
    assert any((out / "rloo" / "seed1" / "checkpoints").iterdir())  # the same settings write them; kept when asked


@pytest.mark.parametrize("bad, expected", [
    ("eval_prompts={tmp}/missing.jsonl", "missing.jsonl"),
    ("sft={tmp}/nowhere", "nowhere: sft is not a model directory (no config.json)"),
    ("methods=[ppo, dqn]", "methods: unknown method 'dqn'"),
])
def test_bad_input_one_line_before_anything_is_written(task, tmp_path, capsys, bad, expected):
    out = tmp_path / "cmp"
    assert main(["compare", *task, f"output_dir={out}", bad.format(tmp=tmp_path)]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("tether: error: ") and expected in err[0], err
    assert not out.exists()


def test_time_budget_every_method_stops_at_the_limit(task, tmp_path, capsys):
    """budget=time: each run stops after the update that reaches time_limit_s (here the first: a millisecond), with
    num_updates as the cap; the report shows the updates each method fitted in."""
    out = tmp_path / "cmp"
    argv = ["compare", *task, f"output_dir={out}", "methods=[ppo, rloo]", "seeds=[0]", "budget=time",
            "time_limit_s=0.001", "num_updates=5", "completions_per_update=4",
            "method_options.rloo.samples_per_prompt=2",
            "ppo.response_length=4", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.sample_every=0",
            "ppo.monitor.preflight=false", "ppo.monitor.tensorboard=false", "ppo.monitor.report=false",
            "eval_every=5", "eval_num_prompts=2", "num_prompts=2", "judges=[vader]"]
    assert main(argv) == 0, capsys.readouterr().err
    rep = json.loads((out / "compare.json").read_text())
    for m in ("ppo", "rloo"):
        assert rep["methods"][m]["budget"]["updates"] == [1]
        assert [p["update"] for p in rep["curves"][m]["0"]] == [1]  # the stopping update was evaluated
        assert (out / m / "seed0" / "final" / "tether_config.yaml").is_file()
    assert rep["resampled"] == "prompts"  # one seed: intervals over prompts only
    assert "0.001 s per run (at most 5 updates)" in (out / "compare.md").read_text()


def test_dpo_beside_a_sampling_method(task, tmp_path, capsys):
    """dpo trains offline on the pairs (its own run length), then is evaluated with the others over its seeds."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": " good and kind", "rejected": " bad"}) + "\n"
                             for p in PROMPTS))
    out = tmp_path / "cmp"
    argv = ["compare", *task, f"output_dir={out}", f"pairs={pairs}", "methods=[rloo, dpo]", "seeds=[0, 1]",
            "num_updates=1", "completions_per_update=4", "method_options.rloo.samples_per_prompt=2",
            "method_options.dpo.max_steps=2", "method_options.dpo.batch_size=2", "method_options.dpo.eval_fraction=0",
            "ppo.response_length=4", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.sample_every=0",
            "ppo.monitor.preflight=false", "ppo.monitor.tensorboard=false", "ppo.monitor.report=false",
            "eval_every=1", "eval_num_prompts=2", "num_prompts=2", "judges=[vader]"]
    assert main(argv) == 0, capsys.readouterr().err
    rep = json.loads((out / "compare.json").read_text())
    d = rep["methods"]["dpo"]
    assert d["stage"] == "dpo" and d["budget"]["updates"] == [2] and d["budget"]["sampled_tokens"] == [0]
    assert d["gain"]["vader"]["n_runs"] == [1, 2] and d["time_to_quality"]["reached"] == "n/a"
    assert [p["update"] for p in d["frontier"]] == [0]
    assert rep["methods"]["rloo"]["budget"]["sampled_tokens"][0] > 0
    assert "| dpo |" in (out / "compare.md").read_text()
    assert (out / "dpo" / "seed1" / "final" / "config.json").is_file()
