"""`tether dpo` and `tether pipeline method=dpo` from the command line: killed-and-resumed runs equal uninterrupted
ones (live and precomputed reference; best/ too), bad inputs give one line and exit 2 with nothing written, the help
lists every option, the TRL names work, and SFT → DPO runs end to end (then skips when finished)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _reliability import (
    data_dir,  # noqa: F401  (fixture)
    dpo_argv,
    leftovers,
    metrics,
    run_cli,
    run_killed,
    tensor_hash,
    tiny_policy,  # noqa: F401  (fixture)
)

from tether.cli import main, parse_config
from tether.config.base import help_lines


def outcome(out: Path) -> dict:
    return {"final": tensor_hash(out / "final" / "model.safetensors"),
            "best": tensor_hash(out / "best" / "model.safetensors"), "metrics": metrics(out / "metrics.jsonl")}


@pytest.fixture(scope="module")
def reference(tiny_policy, data_dir, tmp_path_factory):  # noqa: F811
    cache: dict[str, dict] = {}

    def get(precompute: bool) -> dict:
        if precompute not in cache:
            out = tmp_path_factory.mktemp("ref-dpo") / "run"
            assert run_cli(dpo_argv(out, tiny_policy, data_dir, f"precompute_ref_logprobs={precompute}")) == 0
            cache[precompute] = outcome(out)
        return cache[precompute]

    return get


KILLS = [(False, "after-step:5"),   # between checkpoints 3 and 6, mid-epoch 2; best/ of step 3 on disk
         (False, "after-step:8"),   # the last step done, no final checkpoint, no final/
         (True, "after-step:5"),    # resumed from step 3: the reference scores come from the checkpoint
         (True, "after-step:2")]    # before the first checkpoint: a fresh start scores them again


@pytest.mark.parametrize("precompute,kill_at", KILLS, ids=[f"{'pre' if p else 'live'}-{k}" for p, k in KILLS])
def test_killed_then_resumed_equals_uninterrupted(precompute, kill_at, tiny_policy, data_dir, tmp_path,  # noqa: F811
                                                  reference, capsys):
    out = tmp_path / "run"
    argv = dpo_argv(out, tiny_policy, data_dir, f"precompute_ref_logprobs={precompute}")
    run_killed(argv, kill_at)
    capsys.readouterr()
    assert run_cli(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    if precompute:  # resumed from step 3: the reference scores come back from the checkpoint, not recomputed
        assert ("scoring" in err) == (kill_at == "after-step:2"), err
    assert outcome(out) == reference(precompute)
    assert leftovers(tmp_path) == []


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tether: error: ") and "Traceback" not in err, err
    return lines[0]


def _pairs(tmp_path, rows) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


GOOD = {"prompt": "Review:", "chosen": " good", "rejected": " bad"}
BAD = {
    "empty chosen": ([GOOD, {"prompt": "Review:", "chosen": "", "rejected": " bad"}], [], "line 2"),
    "chosen equals rejected": ([GOOD, {"prompt": "Review:", "chosen": " same", "rejected": " same"}], [], "line 2"),
    "no rejected column": ([GOOD, {"prompt": "Review:", "chosen": " good"}], [], "line 2"),
    "beta 0": ([GOOD], ["beta=0"], "beta"),
    "unknown loss": ([GOOD], ["loss_type=hinge"], "loss_type"),
    "ipo with label smoothing": ([GOOD], ["loss_type=ipo", "label_smoothing=0.1"], "label_smoothing"),
    "prompt longer than the whole": ([GOOD], ["max_prompt_length=32", "max_length=32"], "max_prompt_length"),
    "misspelt option": ([GOOD], ["betta=0.2"], "did you mean beta"),
    "missing model": ([GOOD], ["model=/nonexistent/model"], "/nonexistent/model"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_one_line_exit_2_nothing_written(name, tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    rows, extra, expect = BAD[name]
    out = tmp_path / "out"
    argv = dpo_argv(out, tiny_policy, data_dir)
    argv = [a if not a.startswith("train_file=") else f"train_file={_pairs(tmp_path, rows)}" for a in argv]
    capsys.readouterr()
    assert run_cli([*argv, *extra]) == 2
    assert expect in _one_error(capsys)
    assert not out.exists()


def test_help_lists_every_option_in_groups(capsys):
    from tether.config.dpo import DPOConfig

    with pytest.raises(SystemExit) as exc:
        main(["dpo", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in help_lines(DPOConfig):
        assert " ".join(line.split()) in out, line
    for group in ("[model and data]", "[what is learned]", "[optimisation]", "[logging]", "[checkpoints and resume]"):
        assert group in out
    assert "precompute_ref_log_probs→precompute_ref_logprobs" in out


def test_trl_names():
    cfg = parse_config("dpo", None, ["train_file=p.jsonl", "learning_rate=5e-7", "precompute_ref_log_probs=true",
                                     "per_device_train_batch_size=2", "beta=0.2", "loss_type=ipo"])
    assert (cfg.lr, cfg.precompute_ref_logprobs, cfg.batch_size, cfg.beta, cfg.loss_type) == (5e-7, True, 2, 0.2,
                                                                                                 "ipo")


def _pipeline(out, policy, data, *extra):
    return ["pipeline", f"output_dir={out}", "method=dpo", f"sft.model={policy}",
            f"sft.train_file={data / 'sft.jsonl'}",
            "sft.max_steps=2", "sft.batch_size=2", "sft.eval_fraction=0", f"dpo.train_file={data / 'pairs.jsonl'}",
            "dpo.max_steps=3", "dpo.batch_size=4", "dpo.max_length=32", "dpo.lr=1e-3", "dpo.log_every=1",
            *extra]


def test_pipeline_sft_then_dpo_end_to_end_and_skip(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "pipe"
    argv = _pipeline(out, tiny_policy, data_dir)
    cfg = parse_config("pipeline", None, argv[1:])
    assert cfg.dpo.model == cfg.sft.output_dir == f"{out}/sft" and cfg.rm is None and cfg.ppo is None
    assert main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "[sft] done" in said and "[dpo] done" in said and "[rm]" not in said and "[ppo]" not in said, said
    assert f"final {out / 'dpo' / 'final'}" in said and f"best {out / 'dpo' / 'best'}" in said, said
    assert (out / "dpo" / "final" / "model.safetensors").is_file() and not (out / "rm").exists()
    records = [json.loads(x) for x in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert main([*argv, "--resume", "auto"]) == 0  # --resume sets every stage's resume; the unused ones are dropped
    again = capsys.readouterr().out
    assert "[sft] skipped" in again and "[dpo] skipped" in again, again


@pytest.mark.parametrize("extra,expect", [(["rm.train_file=p.jsonl"], "rm: method=dpo does not run the rm stage"),
                                          (["ppo.kl_coef=0.1"], "ppo: method=dpo does not run the ppo stage"),
                                          (["dpo.model=elsewhere"], "dpo.model is wired by the pipeline"),
                                          (["method=grpo"], "method")])
def test_pipeline_dpo_wiring_errors(extra, expect, tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "pipe"
    argv = [a for a in _pipeline(out, tiny_policy, data_dir)
            if not (a == "method=dpo" and extra[0].startswith("method"))]
    assert main([*argv, *extra]) == 2
    assert expect in _one_error(capsys)
    assert not out.exists()


def test_pipeline_ppo_refuses_a_dpo_section(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    argv = ["pipeline", f"output_dir={tmp_path / 'p'}", f"sft.model={tiny_policy}", "sft.train_file=a.jsonl",
            "rm.train_file=b.jsonl", "dpo.beta=0.2"]
    assert main(argv) == 2
    assert "dpo: method=ppo does not run the dpo stage" in _one_error(capsys)


def test_a_lora_run_killed_then_resumed_equals_uninterrupted(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    """policy_lora from the command line: the adapter (final/ and best/) and the metrics of a run killed after step 5
    and resumed from its step-3 checkpoint equal those of an uninterrupted run."""
    from tether.models.lora import ADAPTER_WEIGHTS

    def adapter_outcome(out: Path) -> dict:
        assert not (out / "final" / "model.safetensors").exists()
        return {"final": tensor_hash(out / "final" / ADAPTER_WEIGHTS),
                "best": tensor_hash(out / "best" / ADAPTER_WEIGHTS), "metrics": metrics(out / "metrics.jsonl")}

    lora = "policy_lora={r: 4, alpha: 8}"
    whole = tmp_path / "whole"
    assert run_cli(dpo_argv(whole, tiny_policy, data_dir, lora)) == 0, capsys.readouterr().err
    out = tmp_path / "run"
    argv = dpo_argv(out, tiny_policy, data_dir, lora)
    run_killed(argv, "after-step:5")
    capsys.readouterr()
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert "resuming from" in capsys.readouterr().err
    assert adapter_outcome(out) == adapter_outcome(whole)
    assert leftovers(tmp_path) == []
