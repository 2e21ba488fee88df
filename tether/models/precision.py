"""Training precision of the SFT and reward-model stages (their ``dtype`` option).

``dtype: float32`` trains in float32 throughout. ``dtype: bfloat16`` is mixed precision: the weights and the AdamW
state stay float32 ("master weights") and every forward runs under ``torch.autocast`` in bfloat16, so matmuls take the
bf16 path while updates smaller than bf16's resolution (2⁻⁸ relative, larger than a typical ``lr`` step) still move
the weights. Pure bf16 AdamW would round most of those updates away: norm gains near 1 never move at ``lr`` 1e-4.
The loss is computed in float32 either way. A later fast path can keep a cached bf16 copy of the weights for the
forward: it would hook in at :func:`compute_context`, with :func:`master_weights` unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

TRAIN_DTYPES = ("float32", "bfloat16")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                                  "float64": torch.float64}
"""Every dtype name a config may spell, to its torch dtype (the one map)."""


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"``/``"float64"`` → the torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _check(name: str) -> None:
    if name not in TRAIN_DTYPES:
        raise ValueError(f"unknown training dtype {name!r}; choose one of {', '.join(TRAIN_DTYPES)}")


def master_dtype(name: str) -> torch.dtype:
    """The dtype weights are loaded and kept in for training under ``dtype=name``: float32 for both settings."""
    _check(name)
    return torch.float32


def master_weights(model: nn.Module) -> nn.Module:
    """Upcast a model whose floating-point weights are half precision (bf16/fp16) to float32 master weights, in
    place; float32 and float64 models are returned as they are."""
    if any(p.is_floating_point() and p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model.float()
    return model


def compute_context(name: str, device: Any = "cpu"):
    """The context every training forward of ``dtype=name`` runs in: ``torch.autocast`` in bfloat16 for
    ``bfloat16``, nothing for ``float32``. ``device``: a torch device (or its type) the model lives on."""
    _check(name)
    if name == "float32":
        return contextlib.nullcontext()
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return torch.autocast(kind, dtype=torch.bfloat16)
