"""Rewards that see the rollout, and Python rewards importable as ``_spies:name`` by config ``rewards`` specs
(tests/ppo is on sys.path while its tests run)."""

from __future__ import annotations

from typing import Callable

import torch


class RolloutSpy:
    """A reward source that scores rollouts through the ``score_rollout`` path (as a reward model does) and keeps
    each rollout, so a test can recompute what the trainer should have done from the very tokens it sampled.

    ``score(rollout) -> (B,) tensor``; default: 0 for every completion.
    """

    def __init__(self, score: Callable | None = None):
        self.score = score or (lambda ro: torch.zeros(len(ro.completions)))
        self.rollouts: list = []
        self.scores: list[torch.Tensor] = []

    def score_rollout(self, rollout):
        s = torch.as_tensor(self.score(rollout), dtype=torch.float32)
        self.rollouts.append(rollout)
        self.scores.append(s)
        return s

    def __call__(self, prompts, completions):  # the text path (unused: score_rollout wins when a rollout is given)
        raise AssertionError("RolloutSpy scores rollouts only")


def row_scores(values):
    """``score(rollout)`` giving row i the value ``values[i % len(values)]``."""
    return lambda ro: torch.tensor([values[i % len(values)] for i in range(len(ro.completions))], dtype=torch.float32)


def spaces(prompts, completions):
    """A dense toy reward: share of characters that are spaces (varies across completions)."""
    return [c.count(" ") / max(len(c), 1) + 0.1 * (i % 3) for i, c in enumerate(completions)]
