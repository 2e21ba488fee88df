"""Kill-and-resume with a LoRA policy (``policy_lora``, shared value head): the checkpoints carry the adapter and its
optimizer state, so a run killed between checkpoints, or after one, and re-run with the same command ends with the
same adapter, value head, metrics and samples as a run never interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
from _reliability import (
    data_dir,  # noqa: F401  (fixture)
    leftovers,
    metrics,
    ppo_argv,
    run_cli,
    run_killed,
    tensor_hash,
    tiny_policy,  # noqa: F401  (fixture)
)

LORA = ("policy_lora={r: 4, alpha: 8}", "critic_mode=shared")


def outcome(out: Path) -> dict:
    final = out / "final"
    return {"weights": tensor_hash(final / "adapter_model.safetensors", final / "critic" / "value_head.safetensors"),
            "metrics": metrics(out / "metrics.jsonl"), "samples": (out / "samples.jsonl").read_text()}


@pytest.fixture(scope="module")
def uninterrupted(tiny_policy, data_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("lora-ref") / "run"
    assert run_cli(ppo_argv(out, tiny_policy, data_dir, *LORA)) == 0
    assert not (out / "final" / "model.safetensors").exists()  # an adapter run: no full copy of the weights
    report = (out / "report.html").read_text()  # the end-of-run report reads the adapter run's config and logs
    assert "policy_lora" in report and "objective/kl" in report
    return outcome(out)


@pytest.mark.parametrize("kill_at", ["after-update:3", "checkpoint-renamed:update-000004"])
def test_lora_killed_then_resumed_equals_uninterrupted(kill_at, tiny_policy, data_dir, tmp_path,  # noqa: F811
                                                       uninterrupted, capsys):
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, *LORA)
    run_killed(argv, kill_at)
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert outcome(out) == uninterrupted
    assert leftovers(tmp_path) == []
