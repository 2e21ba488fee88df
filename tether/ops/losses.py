"""Losses: clipped PPO surrogate, clipped value loss, entropy bonus, KL-in-loss, Bradley–Terry, DPO/IPO.

Token losses take the global normalisers of ``tether.ops.aggregate`` so micro-batching leaves gradients unchanged.
Each returns ``(loss, stats)``; stats are detached float tensors (local masked means) for logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tether.ops._checks import as_mask, positive, same_shape
from tether.ops.aggregate import AggregationMode, aggregate
from tether.ops.kl import KLEstimator, kl_penalty
from tether.ops.masking import masked_mean
from tether.ops.precision import to_compute


def clipped_policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    mode: AggregationMode = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate ``max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))``, aggregated.

    ``clip_high`` defaults to ``clip_low`` (symmetric). ``dual_clip`` = c > 1 bounds the loss of negative-advantage
    tokens at ``−c·A`` (Ye et al. 2020). Pads contribute nothing whatever they hold.
    Shapes: all (B, R) → scalar loss; stats: ``clipfrac``, ``approx_kl`` (k2, ½(Δlogp)²), ``ratio_mean``,
    ``ratio_max``, ``ratio_min``.
    Reference: ppo_details.md H1; oracles O1, O14.
    """
    same_shape(new_logprobs=new_logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=response_mask)
    positive(clip_low, "clip_low")
    clip_high = clip_low if clip_high is None else clip_high
    positive(clip_high, "clip_high")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    mask = as_mask(response_mask)
    log_ratio = torch.where(mask, to_compute(new_logprobs) - to_compute(old_logprobs), 0.0)
    ratio = torch.exp(log_ratio)
    adv = to_compute(advantages)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(loss1, loss2)
    clipped = loss2 > loss1
    if dual_clip is not None:
        loss3 = -adv * dual_clip
        per_token = torch.where(adv < 0, torch.minimum(per_token, loss3), per_token)
    loss = aggregate(per_token, mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(clipped.to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio.masked_fill(~mask, -math.inf).max(),
            "ratio_min": ratio.masked_fill(~mask, math.inf).min(),
        }
    return loss, stats


def clipped_value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.2,
    mode: AggregationMode = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``½·max((v − G)², (clip(v, v_old ± ε_v) − G)²)`` aggregated; ``clip=None`` gives the plain ``½(v − G)²``.

    ε_v is in reward units (ppo_details.md G4). Shapes: all (B, R) → scalar; stats: ``clipfrac``.
    Oracle: O13 (tests/ops/test_losses.py::test_value_loss_inside_band_equals_unclipped).
    """
    same_shape(new_values=new_values, old_values=old_values, returns=returns, mask=mask)
    mask = as_mask(mask)
    # Zero the pads first: a NaN/Inf there would otherwise reach new_values' gradient (0·NaN = NaN) and, through
    # backprop, every critic parameter.
    v, v_old, g = (torch.where(mask, to_compute(t), 0.0) for t in (new_values, old_values, returns))
    unclipped = (v - g) ** 2
    if clip is None:
        per_token = unclipped
        clipped = torch.zeros_like(mask)
    else:
        positive(clip, "value clip")
        v_clip = v_old + (v - v_old).clamp(-clip, clip)
        clipped_sq = (v_clip - g) ** 2
        per_token = torch.maximum(unclipped, clipped_sq)
        clipped = clipped_sq > unclipped
    loss = 0.5 * aggregate(per_token, mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(clipped.to(v.dtype), mask)}
    return loss, stats


def entropy_loss(
    entropy: Tensor,
    mask: Tensor,
    *,
    mode: AggregationMode = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> Tensor:
    """``−aggregate(entropy)``: add ``coef × this`` to the loss to reward entropy. Shapes: (B, R) → scalar."""
    return -aggregate(entropy, mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def kl_loss(
    new_logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    estimator: KLEstimator = "k3",
    log_ratio_clamp: float | None = 10.0,
    mode: AggregationMode = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> Tensor:
    """KL to the reference as a loss term (GRPO style), aggregated; differentiable in ``new_logprobs``.

    With k3 the gradient is the gradient of the k3 sample, an estimate of ∇KL only in expectation (ppo_details.md E5).
    Shapes: (B, R) → scalar.
    """
    same_shape(new_logprobs=new_logprobs, ref_logprobs=ref_logprobs, mask=mask)
    mask = as_mask(mask)
    # Pads become log r = 0 (k = 0) before exp(), so garbage there cannot overflow into a NaN gradient.
    new, ref = (torch.where(mask, to_compute(t), 0.0) for t in (new_logprobs, ref_logprobs))
    kl = kl_penalty(new, ref, estimator, log_ratio_clamp)
    return aggregate(kl, mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """``mean(−log σ(r_c − r_r − m))`` = ``mean(softplus(r_r − r_c + m))``; stats: ``accuracy`` = mean(r_c > r_r).

    Shapes: chosen_scores, rejected_scores (N,), margin scalar or (N,) → scalar.
    Reference: ppo_details.md C3; oracle O18 (L(0) = ln 2, analytic gradient).
    """
    same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    if chosen_scores.numel() == 0:
        raise ValueError("bradley_terry_loss needs at least one pair")
    diff = to_compute(chosen_scores) - to_compute(rejected_scores)
    if margin is not None:
        diff = diff - (margin if isinstance(margin, (int, float)) else to_compute(margin))
    # −logsigmoid, not softplus(−diff): F.softplus switches to the identity above 20 (error up to 8e-10 in fp64).
    loss = -F.logsigmoid(diff).mean()
    with torch.no_grad():
        stats = {"accuracy": (chosen_scores > rejected_scores).to(diff.dtype).mean(), "margin": diff.mean()}
    return loss, stats


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    kind: str = "sigmoid",
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (``kind="sigmoid"``, Rafailov et al. 2023, with conservative label smoothing) or IPO (``kind="ipo"``,
    Azar et al. 2023: ``(h − 1/(2β))²``) on summed sequence log-probabilities.

    ``h = (π_c − ref_c) − (π_r − ref_r)``. Shapes: all (N,) → scalar; stats: ``reward_accuracy``, ``reward_margin``.
    """
    same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    positive(beta, "beta")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = (to_compute(policy_chosen_logps) - to_compute(ref_chosen_logps)) - (to_compute(policy_rejected_logps) - to_compute(ref_rejected_logps))
    if kind == "sigmoid":
        loss = (
            -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
        ).mean()
    elif kind == "ipo":
        loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    else:
        raise ValueError(f"unknown preference loss {kind!r}; choose 'sigmoid' or 'ipo'")
    with torch.no_grad():
        stats = {"reward_accuracy": (h > 0).to(h.dtype).mean(), "reward_margin": (beta * h).mean()}
    return loss, stats


def ipo_loss(*args, beta: float = 0.1, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO loss; see ``dpo_loss(kind="ipo")``."""
    return dpo_loss(*args, beta=beta, kind="ipo", **kwargs)
