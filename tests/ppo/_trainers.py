"""Tiny PPO trainers the PPO tests share (tests/ppo is on sys.path while its tests run): the prompt set, a dense toy
reward, and two trainer builders (``make_trainer``: two epochs, monitor defaults; ``make``: one epoch, quiet)."""

from __future__ import annotations

import torch

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is",
           "The weather today", "A good friend", "In the morning I", "The best thing about"]
QUIET = {"preflight": False, "tensorboard": False, "report": False}
SCORES = [0.9, -0.4, 0.3, 1.2, -1.0, 0.1, 0.6, -0.7]


def length_reward(prompts, completions):
    """Dense toy reward: share of characters that are spaces."""
    return [c.count(" ") / max(len(c), 1) for c in completions]


def make_trainer(tmp_path, tok, model, reward=length_reward, **overrides):
    base = dict(output_dir=str(tmp_path / "run"), rollout_batch_size=8, micro_batch_size=4, response_length=8,
                num_updates=1, num_ppo_epochs=2, progress=False, sample_every=0, seed=0)
    base.update(overrides)
    return PPOTrainer(PPOConfig(**base), policy=model, tokenizer=tok, reward=reward, prompts=PROMPTS)


def make(tmp_path, tok, model, reward, *, prompts=PROMPTS, name="run", reference=None, **overrides):
    base = dict(output_dir=str(tmp_path / name), rollout_batch_size=8, micro_batch_size=4, response_length=8,
                num_updates=1, num_ppo_epochs=1, progress=False, sample_every=0, seed=0, monitor=QUIET)
    base.update(overrides)
    return PPOTrainer(PPOConfig(**base), policy=model, tokenizer=tok, reward=reward, prompts=prompts,
                      reference=reference)


def lengths(rollout) -> torch.Tensor:
    return rollout.response_mask.sum(1).double()
