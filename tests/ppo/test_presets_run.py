"""Each preset drives a real (tiny) PPO run: the trainer starts from ``PPOConfig(preset=NAME)`` with only the batch
and length sizes shrunk, runs two updates, and shows the preset's settings where they act — the optimizer's ε, weight
decay and learning rate, β, the number of optimizer steps per update, completions per prompt, the critic's layout and
the estimator."""

from __future__ import annotations

import math

import pytest
import torch
from _spies import RolloutSpy, row_scores

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig
from tether.config.presets import PRESET_NAMES

QUIET = {"preflight": False, "tensorboard": False, "report": False}
PROMPTS = [f"Prompt number {i} says" for i in range(16)]


def _tiny_overrides(name: str) -> dict:
    """The preset's own minibatch count with two prompts per minibatch, 6-token completions, two updates."""
    full = PPOConfig(preset=name)
    return dict(rollout_batch_size=2 * full.num_minibatches, micro_batch_size=full.samples_per_prompt,
                response_length=6, max_prompt_length=32, num_updates=2)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_tiny_run_starts_from_each_preset(name, tmp_path, gpt2_tok, make_llama):
    small = _tiny_overrides(name)
    cfg = PPOConfig(preset=name, output_dir=str(tmp_path / name), progress=False, sample_every=0, monitor=QUIET,
                    **small)
    preset = PPOConfig(preset=name)
    assert cfg.model_dump(exclude={"output_dir", "progress", "sample_every", "monitor", *small}) == \
        preset.model_dump(exclude={"output_dir", "progress", "sample_every", "monitor", *small})
    spy = RolloutSpy(row_scores([0.5, -0.2, 0.9, 0.1, -0.6]))
    tr = PPOTrainer(cfg, policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok, reward=spy, prompts=PROMPTS)

    opt = tr.optimizers["policy"].param_groups[0]
    assert opt["eps"] == preset.adam_eps and opt["weight_decay"] == preset.weight_decay
    assert (tr.critic is not None) == (preset.advantage == "gae")
    if tr.critic is not None:
        assert tr.optimizers["critic"].param_groups[0]["eps"] == preset.adam_eps
        trained = sum(len(g["params"]) for g in tr.optimizers["critic"].param_groups)
        assert (trained <= 2) == (preset.critic_mode == "shared")  # shared: only the value head's weight and bias

    logs = tr.train()
    assert len(logs) == 2
    first = logs[0]
    assert first["objective/kl_coef"] == pytest.approx(preset.kl_coef)
    assert first["lr/policy"] == pytest.approx(preset.lr)  # no warm-up in any preset: update 1 runs at lr
    if preset.lr_schedule == "constant":
        assert logs[1]["lr/policy"] == pytest.approx(preset.lr)
    else:  # linear / cosine anneal over the two updates
        assert logs[1]["lr/policy"] < preset.lr
    steps = preset.num_ppo_epochs * preset.num_minibatches
    assert first["train/optimizer_steps"] == steps
    ro = spy.rollouts[0]
    assert len(ro.completions) == small["rollout_batch_size"] * preset.samples_per_prompt
    if not preset.stop_at_eos:  # fixed-length sampling: every row ran the full response_length before truncation
        assert ro.query_response.shape[1] - ro.query_length == small["response_length"]
    assert all(math.isfinite(v) for v in first.values() if isinstance(v, float))
    assert torch.isfinite(torch.cat([p.flatten() for p in tr.policy.parameters()])).all()
