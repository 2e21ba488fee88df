"""NaN/Inf guards: a non-finite reward, loss or gradient skips that optimizer step (the update, for a reward), the
skip is logged with its update/step number, K skips in a row stop the run (exit 3) with the last good checkpoint
intact, and non-finite weights are never saved."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from _reliability import (
    data_dir,  # noqa: F401  (fixture)
    leftovers,
    ppo_argv,
    rm_argv,
    run_cli,
    sft_argv,
    tiny_policy,  # noqa: F401  (fixture)
)

from tether.errors import TrainingError


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def finite_file(path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values())


@pytest.fixture
def nan_calls(monkeypatch):
    import _reliability_rewards as rewards

    rewards.reset_calls()

    def set_calls(spec: str) -> None:
        monkeypatch.setenv("TETHER_TEST_NAN_CALLS", spec)

    return set_calls


def test_nan_reward_skips_the_update_and_logs_it(tiny_policy, data_dir, tmp_path, nan_calls, capsys):  # noqa: F811
    nan_calls("2")
    out = tmp_path / "run"
    assert run_cli(ppo_argv(out, tiny_policy, data_dir, reward="nan_on_calls")) == 0
    err = capsys.readouterr().err
    assert "update 2: reward 'brevity' returned a non-finite value (nan) for completion 0" in err
    log = rows(out / "metrics.jsonl")
    assert [m["train/skipped_update"] for m in log] == [0, 1, 0, 0, 0]
    assert log[1]["objective/score"] is None and log[1]["train/optimizer_steps"] == 0
    assert log[1]["train/skipped_steps"] == 4 and log[2]["train/optimizer_steps"] == 4
    assert finite_file(out / "final" / "model.safetensors")


def test_nan_loss_skips_the_step(tiny_policy, data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    import tether.ops as ops

    real = ops.clipped_policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan"), stats) if calls["n"] == 3 else (loss, stats)

    monkeypatch.setattr(ops, "clipped_policy_loss", poisoned)
    out = tmp_path / "run"
    assert run_cli(ppo_argv(out, tiny_policy, data_dir)) == 0
    assert "update 1: non-finite loss, optimizer step skipped" in capsys.readouterr().err
    first = rows(out / "metrics.jsonl")[0]
    assert first["train/skipped_steps"] == 1 and first["train/optimizer_steps"] == 3
    assert first["train/skipped_update"] == 0 and math.isfinite(first["policy/loss"])
    assert finite_file(out / "final" / "model.safetensors")


def test_consecutive_skips_stop_with_the_checkpoint_intact(tiny_policy, data_dir, tmp_path, nan_calls,  # noqa: F811
                                                           capsys):
    nan_calls("3,4")
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, "max_consecutive_skips=2", reward="nan_on_calls")
    assert run_cli(argv) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("tether: error: update 4: 2 updates in a row without an optimizer step")
    assert "update-000002" in lines[-1] and "reward 'brevity'" in lines[-1]
    assert (out / "checkpoints" / "latest").read_text().strip() == "update-000002"
    assert not (out / "final").exists() and leftovers(tmp_path) == []
    assert [m["train/skipped_update"] for m in rows(out / "metrics.jsonl")] == [0, 0, 1, 1]


def test_sft_nan_loss_is_skipped_logged_and_stops_after_k(tiny_policy, data_dir, tmp_path, monkeypatch,  # noqa: F811
                                                          capsys):
    import tether.algos.sft as sft

    real, calls, poison = sft.sft_loss, {"n": 0}, {3}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in poison else loss

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    out = tmp_path / "run"
    assert run_cli(sft_argv(out, tiny_policy, data_dir, "num_epochs=1")) == 0
    assert "step 2: non-finite loss, optimizer step skipped" in capsys.readouterr().err  # 2 micro-batches a step
    log = rows(out / "metrics.jsonl")
    skipped = [m for m in log if m.get("skipped")]
    assert [m["step"] for m in skipped] == [2] and skipped[0]["loss"] is None
    assert finite_file(out / "model.safetensors")

    calls["n"], poison = 0, set(range(5, 100))
    stop = tmp_path / "stop"
    assert run_cli(sft_argv(stop, tiny_policy, data_dir, "max_consecutive_skips=2")) == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 4: 2 optimizer steps in a row skipped" in line and "step-000002" in line
    assert not (stop / "model.safetensors").exists()


def test_rm_nonfinite_gradient_is_skipped(tiny_policy, data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A finite loss whose gradient is not finite (here: poisoned by a hook) is caught by the gradient-norm check."""
    import tether.algos.rm as rm

    real, calls = rm.sequence_scores, {"n": 0}

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        scores = real(model, *args, **kwargs)
        if calls["n"] == 2 and scores.requires_grad:
            scores.register_hook(lambda g: g * float("inf"))
        return scores

    monkeypatch.setattr(rm, "sequence_scores", poisoned)
    out = tmp_path / "run"
    assert run_cli(rm_argv(out, tiny_policy, data_dir, "num_epochs=1")) == 0
    assert "step 2: non-finite gradient, optimizer step skipped" in capsys.readouterr().err
    assert [m["step"] for m in rows(out / "metrics.jsonl") if m.get("skipped")] == [2]
    assert finite_file(out / "model.safetensors")


def test_non_finite_weights_are_never_saved(tmp_path):
    from conftest import tiny_llama
    from tether.engine.outputs import save_model_atomic
    from tether.engine.checkpoint import write_checkpoint

    model = tiny_llama(64)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="up_proj.weight holds NaN/Inf"):
        save_model_atomic(model, None, tmp_path / "model")
    with pytest.raises(TrainingError, match="refusing to save non-finite weights"):
        write_checkpoint(tmp_path / "ckpts", "step-000001", models={"model": model}, state={}, files={},
                         meta={"step": 1})
    assert not (tmp_path / "model").exists() and not (tmp_path / "ckpts" / "step-000001").exists()
    assert leftovers(tmp_path) == [] and os.listdir(tmp_path) in (["ckpts"], [])
