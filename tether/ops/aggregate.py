"""Loss aggregation: turn a per-token loss matrix into a scalar with a *global* normaliser.

The normaliser (token count, sequence count, constant length) is passed by the caller and counts the whole
minibatch, so summing the aggregated losses of its micro-batches gives exactly the minibatch loss and
micro-batching does not change the gradient (ppo_details.md I4; oracle O16).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tether.ops._checks import as_mask, nonempty, same_shape
from tether.ops.precision import compute_dtype

AggregationMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
AGGREGATION_MODES: tuple[str, ...] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: AggregationMode = "token_mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> Tensor:
    """Reduce ``per_token`` (B, R) to a scalar.

    - ``token_mean``: ``Σ m·L / num_tokens`` (PPO N+, DAPO).
    - ``seq_mean_token_mean``: ``Σ_i (Σ_t m·L / |o_i|) / num_seqs`` (original GRPO).
    - ``seq_mean_token_sum``: ``Σ_i Σ_t m·L / num_seqs``.
    - ``seq_mean_token_sum_norm``: ``Σ m·L / (num_seqs · max_len)`` (Dr. GRPO's constant divisor).
    ``num_tokens``/``num_seqs`` default to this batch's own counts and ``max_len`` to R; pass the
    minibatch's counts when this is one micro-batch of it.
    Shapes: per_token, mask (B, R) → scalar (float32, or float64 in).
    Reference: ppo_details.md I3, I4. Oracle: tests/ops/test_aggregate.py
    """
    same_shape(per_token=per_token, mask=mask)
    mask = as_mask(mask)
    nonempty(mask)
    dtype = compute_dtype(per_token)
    x = torch.where(mask, per_token.to(dtype), torch.zeros((), dtype=dtype, device=per_token.device))
    n_tok = float(mask.sum()) if num_tokens is None else float(num_tokens)
    n_seq = float(mask.shape[0]) if num_seqs is None else float(num_seqs)
    length = float(mask.shape[1]) if max_len is None else float(max_len)
    for name, value in (("num_tokens", n_tok), ("num_seqs", n_seq), ("max_len", length)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if mode == "token_mean":
        return x.sum() / n_tok
    if mode == "seq_mean_token_mean":
        return (x.sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seq
    if mode == "seq_mean_token_sum":
        return x.sum() / n_seq
    if mode == "seq_mean_token_sum_norm":
        return x.sum() / (n_seq * length)
    raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(AGGREGATION_MODES)}")
