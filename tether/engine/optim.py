"""Optimisers, learning-rate schedules and seeding: the same for every stage."""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy (when installed) and torch (CPU and every CUDA device)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)


def build_optimizer(
    params: Iterable[nn.Parameter] | nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on matrices (≥ 2 dims), never on biases, norms or
    1-d gains. ``eps`` defaults to 1e-5 (N+, ppo_details.md J1). ``params``: a module or an iterable of parameters."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(params, nn.Module):
        params = params.parameters()
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters to optimise")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def lr_factor(step: int, kind: ScheduleKind, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based: the factor used *by* update ``step + 1``).

    Warm-up: ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``. After it, with
    ``p = (step − warmup_steps) / (total_steps − warmup_steps)``: constant 1, linear ``1 − p``, cosine
    ``½(1 + cos πp)``. Linear with no warm-up is N+'s PPO anneal ``lr·(1 − (u−1)/U)`` for update ``u = step + 1``
    (ppo_details.md J2); the factor is in (0, 1] for every step < ``total_steps``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return max(0.0, 1.0 - p)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: ScheduleKind, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with :func:`lr_factor`; call ``scheduler.step()`` once after each ``optimizer.step()``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps ≥ 0 and total_steps ≥ 1, got {warmup_steps} and {total_steps}")
    lr_factor(0, kind, warmup_steps, total_steps)  # validates kind
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, kind, warmup_steps, total_steps)
    )


def step_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()``, without torch's warning when the optimizer has not stepped yet (every step so far was
    skipped for NaN/Inf): the schedule follows the step count, taken or skipped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def derive_seed(seed: int, purpose: str, index: int) -> int:
    """A stable 63-bit seed for (seed, purpose, index): independent streams for sampling, shuffles and init."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
