"""Per-token rewards: the KL penalty at every valid token and the sequence score at exactly one index."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tether.ops._checks import as_mask, positive, same_shape
from tether.ops.masking import masked_whiten
from tether.ops.precision import compute_dtype

ScorePlacement = Literal["eos", "eos+1"]
MissingEOSMode = Literal["subtract", "replace"]


def score_index(response_mask: Tensor, placement: ScorePlacement = "eos") -> Tensor:
    """Column of each row that receives the sequence score.

    ``"eos"``: the last valid token ℓ (the EOS, or the last column when there is none).
    ``"eos+1"``: ℓ+1 when it fits in the response, else ℓ (the N+/TRL convention, trl#1893).
    Shapes: response_mask (B, R) bool (a prefix mask) → (B,) long.
    Reference: ppo_details.md F1, §6.1.
    """
    mask = as_mask(response_mask)
    if not bool(mask[:, 0].all()):
        raise ValueError("response_mask: every row needs at least one valid token")
    last = mask.sum(dim=1) - 1
    cols = torch.arange(mask.shape[1], device=mask.device)
    if not bool((mask == (cols.unsqueeze(0) <= last.unsqueeze(1))).all()):
        # sum − 1 is the last valid index only for a prefix mask; a hole would put the score on a pad.
        raise ValueError("response_mask must be a prefix mask (valid tokens first, then padding only)")
    if placement == "eos":
        return last
    if placement == "eos+1":
        return torch.where(last + 1 < mask.shape[1], last + 1, last)
    raise ValueError(f"unknown score placement {placement!r}; choose 'eos' or 'eos+1'")


def critic_mask(response_mask: Tensor, placement: ScorePlacement = "eos") -> Tensor:
    """The positions that carry rewards, values and advantages: the response mask, plus the score slot ℓ+1
    in ``"eos+1"`` mode (N+'s ``padding_mask_p1``).

    Shapes: response_mask (B, R) → (B, R) bool.
    """
    mask = as_mask(response_mask)
    idx = score_index(mask, placement)
    cols = torch.arange(mask.shape[1], device=mask.device)
    return cols.unsqueeze(0) <= idx.unsqueeze(1)


def shape_rewards(
    scores: Tensor,
    kl: Tensor,
    response_mask: Tensor,
    kl_coef: float,
    placement: ScorePlacement = "eos",
) -> Tensor:
    """``r[b, t] = −β·kl[b, t]`` at every valid token, plus ``scores[b]`` at the score index of row b.

    Shapes: scores (B,), kl (B, R), response_mask (B, R) → rewards (B, R) float32; 0 wherever the critic mask
    (``critic_mask``) is 0. Invariant: ``rewards.sum(1) == scores − β·(kl·mask).sum(1)``.
    Reference: ppo_details.md F1; oracle O7.
    Oracle: tests/ops/test_rewards.py::test_score_placed_once_and_sum_identity
    """
    same_shape(kl=kl, response_mask=response_mask)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"scores must be (B,) = ({kl.shape[0]},), got {tuple(scores.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    mask = as_mask(response_mask)
    dtype = compute_dtype(kl)
    rewards = torch.where(mask, -kl_coef * kl.to(dtype), torch.zeros((), dtype=dtype, device=kl.device))
    idx = score_index(mask, placement)
    return rewards.scatter_add(1, idx.unsqueeze(1), scores.to(dtype).unsqueeze(1))


def apply_missing_eos_penalty(
    scores: Tensor, has_eos: Tensor, penalty: float, mode: MissingEOSMode = "subtract"
) -> Tensor:
    """Penalise rows that did not emit EOS: ``s − p`` (``"subtract"``, TRL) or ``−p`` (``"replace"``, N+ with p=1).

    Shapes: scores (B,), has_eos (B,) bool → (B,). Rows with EOS are returned unchanged.
    Reference: ppo_details.md D3; oracle O6.
    """
    same_shape(scores=scores, has_eos=has_eos)
    has_eos = as_mask(has_eos, "has_eos")
    if mode == "subtract":
        penalised = scores - penalty
    elif mode == "replace":
        penalised = torch.full_like(scores, -penalty)
    else:
        raise ValueError(f"unknown missing-EOS mode {mode!r}; choose 'subtract' or 'replace'")
    return torch.where(has_eos, scores, penalised)


def clip_scores(scores: Tensor, clip: float) -> Tensor:
    """Clamp sequence scores to ``[−clip, clip]`` (PPO-max). Shapes: (B,) → (B,)."""
    positive(clip, "score clip")
    return scores.clamp(-clip, clip)


def whiten_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Scale per-token rewards to unit variance over the valid tokens, keeping their mean (``shift_mean=False``);
    pads stay 0. Needs enough tokens for a meaningful variance.

    Shapes: rewards, mask (B, R) → (B, R). Reference: ppo_details.md F4.
    """
    return masked_whiten(rewards, mask, shift_mean=False)


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the sequence score:

    ``0`` for ℓ ≤ L_max − L_cache; ``factor · (L_max − L_cache − ℓ) / L_cache`` for L_max − L_cache < ℓ ≤ L_max
    (linear from 0 down to −factor); ``−factor`` for ℓ > L_max. ℓ: the completion's length in tokens (its EOS
    included), L_max: ``max_length``, L_cache: ``buffer``.

    Shapes: lengths (B,) int or float → (B,) float32 (float64 for float64 lengths), each in [−factor, 0].
    Oracle: tests/ops/test_rewards.py::test_overlong_penalty_hand_computed
    """
    positive(max_length, "max_length")
    positive(buffer, "overlong buffer")
    if buffer > max_length:
        raise ValueError(f"overlong buffer {buffer} exceeds max_length {max_length}")
    if factor < 0:
        raise ValueError(f"overlong penalty factor must be >= 0, got {factor}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (B,), got shape {tuple(lengths.shape)}")
    x = lengths.to(torch.float64 if lengths.dtype == torch.float64 else torch.float32)
    start = max_length - buffer
    return (-(x - start).clamp(min=0.0, max=float(buffer)) / buffer * factor).where(x <= max_length,
                                                                                  torch.full_like(x, -factor))


def groups_with_signal(scores: Tensor, group_size: int) -> Tensor:
    """Which groups of ``group_size`` consecutive scores are not all equal (DAPO's dynamic-sampling filter): a group
    whose scores are all equal has zero advantage under every group baseline, so it teaches the policy nothing.

    Shapes: scores (B,) with B a multiple of group_size → (B / group_size,) bool.
    Oracle: tests/ops/test_rewards.py::test_groups_with_signal
    """
    positive(group_size, "group_size")
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores must be (B,) with B a multiple of group_size={group_size}, got "
                         f"{tuple(scores.shape)}")
    g = scores.view(-1, group_size)
    return ~(g == g[:, :1]).all(dim=1)
