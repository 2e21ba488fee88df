"""Argument checks shared by the ops: each raises ``ValueError`` naming what was wrong, never a silent NaN."""

from __future__ import annotations

import torch
from torch import Tensor


def same_shape(**tensors: Tensor) -> None:
    """Raise if the named tensors do not all have one shape."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"shape mismatch: {first_name} has shape {tuple(first.shape)} but {name} has {tuple(t.shape)}"
            )


def as_mask(mask: Tensor, name: str = "response_mask") -> Tensor:
    """Return ``mask`` as a bool tensor; raise if it holds values other than 0/1."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold only 0/1 or booleans")
        return mask.bool()
    raise ValueError(f"{name} has unsupported dtype {mask.dtype}")


def nonempty(mask: Tensor, name: str = "response_mask") -> None:
    """Raise if the mask selects nothing (a mean over it would be NaN)."""
    if not bool(mask.any()):
        raise ValueError(f"{name} selects no elements: nothing to average over")


def positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def in_range(value: float, name: str, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
