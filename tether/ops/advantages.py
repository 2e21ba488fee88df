"""Advantage estimators: GAE for PPO with a critic, and the critic-free group/batch baselines.

Every estimator has one signature so the trainer picks it by name from ``ADVANTAGE_ESTIMATORS``::

    fn(rewards, values, mask, scores, *, gamma, lam, group_size, eps) -> (advantages, returns | None)

``rewards`` is the shaped per-token reward (score at one index, −β·KL elsewhere); ``mask`` is the critic mask;
``scores`` the (B,) sequence scores; rows of one group are contiguous (``group_size`` rows per prompt).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from tether.ops._checks import as_mask, in_range, same_shape
from tether.ops.masking import masked_whiten
from tether.ops.precision import compute_dtype


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over response tokens; no whitening inside.

    ``δ_t = r_t + γ·V_{t+1} − V_t``, ``A_t = δ_t + γλ·A_{t+1}``, ``returns = A + V``. Values after the last
    valid token count as 0 (no bootstrap past the end); A and returns are 0 at masked positions.
    Shapes: rewards, values, mask (B, R) → advantages (B, R), returns (B, R), float32 (float64 in, float64 out).
    Reference: Schulman et al. 2015 eq. 16; ppo_details.md G3.
    Oracle: tests/ops/test_advantages.py (identities a–f, float64 loop)
    """
    same_shape(rewards=rewards, values=values, mask=mask)
    in_range(gamma, "gamma", 0.0, 1.0)
    in_range(lam, "lam", 0.0, 1.0)
    mask = as_mask(mask)
    dtype = compute_dtype(rewards)
    m = mask.to(dtype)
    # torch.where, not a product: a NaN/Inf left in a pad column must not leak into valid tokens (NaN·0 = NaN).
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(mask, rewards.to(dtype), zero)
    v = torch.where(mask, values.to(dtype), zero)
    length = r.shape[1]
    advantages = torch.zeros_like(r)
    last = torch.zeros_like(r[:, 0])
    for t in reversed(range(length)):
        next_v = v[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + v) * m


def _groups(x: Tensor, group_size: int) -> Tensor:
    if group_size < 2:
        raise ValueError(f"group estimators need samples_per_prompt >= 2, got {group_size}")
    if x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of samples_per_prompt={group_size}")
    return x.view(-1, group_size)


def _broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, seq_adv.unsqueeze(1), torch.zeros((), dtype=seq_adv.dtype, device=seq_adv.device))


def _returns(rewards: Tensor, mask: Tensor) -> Tensor:
    dtype = compute_dtype(rewards)
    return torch.where(mask, rewards.to(dtype), 0.0).sum(1)


def grpo_advantages(returns: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """GRPO: ``(R_i − mean_g R)/(std_g R + eps)`` within each group (``scale=False``: Dr. GRPO, mean only).

    std is the unbiased sample std, as in the GRPO paper and TRL. A group with equal returns gets 0.
    Shapes: returns (B,) → (B,). Reference: ppo_details.md K2, K3; oracle O25.
    """
    g = _groups(returns, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    # A group of equal returns carries no signal. Its rounded mean can differ from the members by an ulp, and
    # dividing that by std + eps (std ≈ 1e-7) gave advantages up to ~0.8 in float32; force an exact 0.
    constant = (g == g[:, :1]).all(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(centred), centred).reshape(-1)


def rloo_advantages(returns: Tensor, group_size: int) -> Tensor:
    """RLOO: ``A_i = R_i − mean_{j≠i} R_j`` within each group; equals ``k/(k−1)·(R_i − mean R)``.

    Shapes: returns (B,) → (B,). Reference: ppo_details.md K1; oracle O25.
    """
    g = _groups(returns, group_size)
    k = g.shape[1]
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def reward_to_go(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = Σ_{k≥t} γ^{k−t} r_k`` over valid tokens; 0 at masked positions. Shapes: (B, R) → (B, R)."""
    same_shape(rewards=rewards, mask=mask)
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return advantages


def _gae_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    if values is None:
        raise ValueError("advantage estimator 'gae' needs critic values")
    return gae(rewards, values, mask, gamma=gamma, lam=lam)


def _grpo_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    mask = as_mask(mask)
    return _broadcast(grpo_advantages(_returns(rewards, mask), group_size, eps), mask), None


def _dr_grpo_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    mask = as_mask(mask)
    return _broadcast(grpo_advantages(_returns(rewards, mask), group_size, eps, scale=False), mask), None


def _rloo_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    mask = as_mask(mask)
    return _broadcast(rloo_advantages(_returns(rewards, mask), group_size), mask), None


def _reinforce_pp_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    """REINFORCE++: per-token return-to-go (score − β·Σ_{i≥t} KL_i), whitened over the whole batch."""
    mask = as_mask(mask)
    return whiten(reward_to_go(rewards, mask, gamma), mask), None


def _reinforce_pp_baseline_estimator(rewards, values, mask, scores, *, gamma, lam, group_size, eps, whiten=masked_whiten):
    """REINFORCE++-baseline: subtract each group's mean score first, then return-to-go and global whitening."""
    mask = as_mask(mask)
    dtype = compute_dtype(rewards)
    s = scores.to(dtype)
    g = _groups(s, group_size)
    shift = (g.mean(dim=1, keepdim=True).expand_as(g)).reshape(-1)
    from tether.ops.rewards import score_index  # local: avoid a cycle at import time

    idx = score_index(mask)
    shifted = rewards.to(dtype).scatter_add(1, idx.unsqueeze(1), -shift.unsqueeze(1))
    return whiten(reward_to_go(shifted, mask, gamma), mask), None


AdvantageFn = Callable[..., tuple[Tensor, "Tensor | None"]]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "gae": _gae_estimator,
    "grpo": _grpo_estimator,
    "dr_grpo": _dr_grpo_estimator,
    "rloo": _rloo_estimator,
    "reinforce_pp": _reinforce_pp_estimator,
    "reinforce_pp_baseline": _reinforce_pp_baseline_estimator,
}
"""Estimators by name. ``gae`` needs a critic; the others need none. Group estimators need group_size ≥ 2. Each
takes ``whiten`` (default :func:`masked_whiten`): the whitening of the REINFORCE++ estimators, which a caller with
the batch split over processes replaces by one with the whole batch's moments."""

GROUP_ESTIMATORS = frozenset({"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"})
CRITIC_ESTIMATORS = frozenset({"gae"})
