"""The compute-dtype rule, written once: tether's math runs in float32, or in float64 when handed float64 (the
oracle tests' precision); bfloat16/float16 inputs are upcast to float32 before any reduction or exp."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 when ``x`` is float64, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_compute(x: Tensor) -> Tensor:
    """``x`` in :func:`compute_dtype` (itself when it already is)."""
    return x.to(compute_dtype(x))
