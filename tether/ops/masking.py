"""Masks, masked reductions and whitening.

Every function computes in float32 (or float64 when given float64) and takes an explicit mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tether.ops._checks import as_mask, nonempty, same_shape
from tether.ops.precision import to_compute


def first_true_index(bools: Tensor, dim: int = -1) -> Tensor:
    """Index of the first True along ``dim``; the length of ``dim`` where a row has none.

    Shapes: bools (..., L) bool → (...) long.
    Oracle: tests/ops/test_masking.py::test_first_true_index_matches_loop
    """
    bools = as_mask(bools, "bools")
    length = bools.shape[dim]
    idx = torch.arange(length, device=bools.device)
    shape = [1] * bools.dim()
    shape[dim] = length
    idx = idx.view(shape).expand_as(bools)
    return torch.where(bools, idx, torch.full_like(idx, length)).min(dim=dim).values


def response_mask_from_eos(responses: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """Mask of valid response tokens: True up to and including the first EOS (all True when there is none).

    Shapes: responses (B, R) long → mask (B, R) bool, has_eos (B,) bool.
    Reference: ppo_details.md §0 (m[b, t]) and D2.
    Oracle: tests/ops/test_masking.py::test_response_mask_from_eos
    """
    if responses.dim() != 2:
        raise ValueError(f"responses must be (B, R), got shape {tuple(responses.shape)}")
    is_eos = responses == eos_token_id
    first = first_true_index(is_eos, dim=1)  # R where no EOS
    cols = torch.arange(responses.shape[1], device=responses.device)
    mask = cols.unsqueeze(0) <= first.unsqueeze(1)
    return mask, first < responses.shape[1]


def truncate_after_eos(responses: Tensor, eos_token_id: int, pad_token_id: int) -> Tensor:
    """Replace every token after the first EOS by ``pad_token_id``; the EOS itself is kept. Idempotent.

    Shapes: responses (B, R) long → (B, R) long.
    Oracle: tests/ops/test_masking.py::test_truncate_after_eos
    """
    mask, _ = response_mask_from_eos(responses, eos_token_id)
    return responses.masked_fill(~mask, pad_token_id)


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is True (pads contribute exactly 0, even if they hold NaN).

    Shapes: values, mask (...) → scalar, or the shape without ``dim``.
    """
    same_shape(values=values, mask=mask)
    mask = as_mask(mask)
    x = torch.where(mask, to_compute(values), 0.0)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the True entries of ``mask``.

    Shapes: values, mask (...) → scalar (``dim=None``) or reduced over ``dim``.
    Raises ValueError when the mask is empty (``dim=None``); with ``dim`` a row with no valid entry gives 0.
    Oracle: tests/ops/test_masking.py::test_masked_mean_equals_mean_of_selected
    """
    same_shape(values=values, mask=mask)
    mask = as_mask(mask)
    if dim is None:
        nonempty(mask)
        return masked_sum(values, mask) / mask.sum()
    count = mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Biased (population) variance of ``values`` over the True entries of ``mask``.

    Biased as in ``tf.nn.moments`` and the N+ reference (ppo_details.md I2); ``torch.var`` would be unbiased.
    Shapes: values, mask (...) → scalar.
    Oracle: tests/ops/test_masking.py::test_masked_whiten_tf_example
    """
    mean = masked_mean(values, mask)
    return masked_mean((values.to(mean.dtype) - mean) ** 2, mask)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  moments: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Whiten over the valid entries: ``(x − μ)/sqrt(σ² + eps)``; with ``shift_mean=False`` the mean is added back.

    Pads are set to 0. μ and σ² are the masked mean and biased variance, or ``moments`` = (μ, σ²) when given: those
    of a larger batch this one is part of (the whole batch over several processes, reduced by the caller).
    Shapes: values, mask (...) → (...) float32 (float64 in, float64 out).
    Reference: ppo_details.md I1, F4.
    Oracle: tests/ops/test_masking.py::test_masked_whiten_moments, ::test_masked_whiten_tf_example
    """
    mask = as_mask(mask)
    if moments is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        dtype = to_compute(values).dtype
        mean, var = (torch.as_tensor(m, dtype=dtype, device=values.device) for m in moments)
    x = values.to(mean.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))
