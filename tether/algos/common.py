"""Helpers the offline stages (SFT, RM) share: the held-out split and the gradient norm."""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch
from torch import nn


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``round(fraction·n)`` records (at least 1 when fraction > 0 and n ≥ 2).
    Returns (train, eval) in the original order within each part."""
    n = len(records)
    if fraction <= 0 or n < 2:
        return list(records), []
    k = min(n - 1, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def grad_norm(params: Iterable[nn.Parameter]) -> float:
    """Global L2 norm of the gradients (0.0 when none)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
