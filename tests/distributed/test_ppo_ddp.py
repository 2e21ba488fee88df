"""Data-parallel PPO: 2 gloo processes × B/2 prompts give the update of 1 process × B prompts — float64, GAE with a
critic (whitened advantages, adaptive β) and GRPO (a prompt's group on one process), weights after 2 whole updates
with sampling, to 1e-6 relative, and the logged statistics of the whole batch; rank 0 alone writes."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from _dist import assert_weights_close, load_weights, records, run_worker

COMMON = {"num_updates": 2, "rollout_batch_size": 4, "num_minibatches": 2, "micro_batch_size": 2,
          "num_ppo_epochs": 2, "response_length": 6, "lr": 3e-3, "critic_lr": 3e-3, "lr_schedule": "constant",
          "adam_eps": 1e-3, "checkpoint_every": 1, "sample_every": 1, "progress": False, "seed": 5,
          "monitor": {"preflight": False, "report": False}, "device": "cpu"}
KEYS = ("objective/score", "objective/kl", "objective/kl_coef", "objective/entropy", "response/length_mean",
        "policy/loss", "policy/clipfrac", "policy/approx_kl", "policy/ratio_max", "policy/grad_norm", "value/loss",
        "value/grad_norm", "value/explained_variance", "value/mean", "train/optimizer_steps")

pytestmark = pytest.mark.xdist_group("distributed")


@pytest.mark.parametrize("estimator", ["gae", "gae-separate", "grpo"])
def test_ppo_two_processes_equal_one_process(tmp_path, estimator):
    """``gae``: the default critic, a value head on the policy's trunk; ``gae-separate``: its own model (DDP-wrapped
    on its own)."""
    cfg = dict(COMMON, advantage=estimator.split("-")[0])
    if estimator.startswith("gae"):
        cfg |= {"kl_controller": "adaptive", "kl_target": 0.001, "kl_horizon": 20, "whiten_rewards": True}
        if estimator == "gae-separate":
            cfg |= {"critic_mode": "separate"}
    else:
        cfg |= {"samples_per_prompt": 2}
    outs = {}
    for nproc in (1, 2):
        outs[nproc] = tmp_path / f"out{nproc}"
        run_worker({"stage": "ppo", "cfg": {**cfg, "output_dir": str(outs[nproc])}}, tmp_path, nproc)
    assert_weights_close(load_weights(outs[1] / "final"), load_weights(outs[2] / "final"), rtol=1e-6)
    if estimator == "gae-separate":
        assert_weights_close(load_weights(outs[1] / "final" / "critic"), load_weights(outs[2] / "final" / "critic"),
                             rtol=1e-6)
    elif estimator == "gae":
        heads = [load_file(str(outs[n] / "final" / "critic" / "value_head.safetensors")) for n in (1, 2)]
        assert_weights_close(*heads, rtol=1e-6)
    r1, r2 = records(outs[1]), records(outs[2])
    assert len(r1) == len(r2) == 2
    for a, b in zip(r1, r2):
        assert a.keys() == b.keys()
        for k in KEYS:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    assert abs(r1[1]["objective/kl"]) > 1e-4  # the policy moved away from the reference
    samples = [(outs[n] / "samples.jsonl").read_text().splitlines() for n in (1, 2)]
    assert len(samples[0]) == len(samples[1]) > 0
