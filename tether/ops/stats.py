"""Diagnostics every PPO update logs."""

from __future__ import annotations

import torch
from torch import Tensor

from tether.ops._checks import as_mask, same_shape
from tether.ops.masking import masked_mean, masked_var
from tether.ops.precision import compute_dtype, to_compute


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 − Var(G − V)/Var(G)`` over valid tokens (biased variances); NaN-free: 0 when Var(G) is 0.

    Shapes: values, returns, mask (B, R) → scalar. 1 is a perfect critic, 0 no better than a constant.
    Reference: ppo_details.md G6.
    """
    same_shape(values=values, returns=returns, mask=mask)
    var_g = masked_var(returns, mask)
    var_res = masked_var(returns.to(var_g.dtype) - values.to(var_g.dtype), mask)
    if float(var_g) == 0.0:
        return torch.zeros((), dtype=var_g.dtype, device=var_g.device)
    return 1.0 - var_res / var_g


def sequence_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    """Per-row sum over valid tokens. Shapes: (B, R) → (B,)."""
    same_shape(per_token=per_token, mask=mask)
    return torch.where(as_mask(mask), to_compute(per_token), 0.0).sum(1)


def mean_sequence_kl(kl: Tensor, mask: Tensor) -> Tensor:
    """``objective/kl``: mean over rows of the per-row KL sum (nats per sequence). Shapes: (B, R) → scalar.

    Reference: ppo_details.md E6.
    """
    return sequence_sum(kl, mask).mean()


def approx_kl(new_logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """k2 approximation ``½·mean((logp_new − logp_old)²)`` over valid tokens. Shapes: (B, R) → scalar."""
    same_shape(new_logprobs=new_logprobs, old_logprobs=old_logprobs, mask=mask)
    dtype = compute_dtype(new_logprobs)
    d = new_logprobs.to(dtype) - old_logprobs.to(dtype)
    return masked_mean(0.5 * d**2, mask)
