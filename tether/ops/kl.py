"""Per-token KL estimators between the sampling policy and the reference (Schulman, "Approximating KL").

With samples from π and ``log r = ref_logprobs − logprobs``:
``k1 = −log r`` (unbiased, can be negative), ``k2 = ½ (log r)²`` (biased, ≥ 0), ``k3 = (r − 1) − log r``
(unbiased, ≥ 0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tether.ops._checks import positive, same_shape
from tether.ops.precision import compute_dtype

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: KLEstimator = "k1",
    log_ratio_clamp: float | None = None,
) -> Tensor:
    """Per-token KL sample of π against π_ref under the named estimator, in float32.

    Shapes: logprobs, ref_logprobs (B, R) → (B, R). Masking is the caller's job (pads are typically equal
    constants in both inputs, which gives 0 for every estimator).
    ``log_ratio_clamp`` clamps ``log(π_ref/π)`` to ±c before ``exp`` in k3, so a large log-ratio cannot overflow
    to Inf (verl#891); it applies to every estimator so they stay comparable.
    Reference: ppo_details.md E5; oracle O9–O11.
    Oracle: tests/ops/test_kl.py
    """
    same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    dtype = compute_dtype(logprobs)
    log_r = ref_logprobs.to(dtype) - logprobs.to(dtype)
    if log_ratio_clamp is not None:
        positive(log_ratio_clamp, "log_ratio_clamp")
        log_r = log_r.clamp(-log_ratio_clamp, log_ratio_clamp)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return torch.expm1(log_r) - log_r
