"""Typed records that carry data between the stages of a PPO update. Imports torch only.

Dimension letters follow ppo_details.md §0: B sequences, Q padded query length, R response length.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rollout:
    """Sampled completions of one rollout batch."""

    query_response: Tensor  # (B, Q+R) long; query left-padded to Q, response right-padded after the first EOS
    attention_mask: Tensor  # (B, Q+R) bool; False at every pad (left pads of the query, pads after EOS)
    response_mask: Tensor  # (B, R) bool; True up to and including the first EOS
    has_eos: Tensor  # (B,) bool
    logprobs: Tensor  # (B, R) float32; log π_old(token) at the sampling temperature, recomputed by the training forward
    prompts: list[str]  # B prompts as the user gave them (before any chat template)
    completions: list[str]  # B decoded completions, truncated at EOS, special tokens removed
    query_length: int  # Q
    values: Optional[Tensor] = None  # (B, R) float32 V_old from the log-prob forward (shared critic), else None

    @property
    def responses(self) -> Tensor:  # (B, R)
        return self.query_response[:, self.query_length :]


@dataclass(frozen=True)
class Experience:
    """A scored rollout with everything the update needs, frozen for all epochs (ppo_details.md H2)."""

    query_response: Tensor  # (B, Q+R) long
    attention_mask: Tensor  # (B, Q+R) bool
    response_mask: Tensor  # (B, R) bool; tokens the policy emitted (loss mask)
    critic_mask: Tensor  # (B, R) bool; response_mask plus the score slot in "eos+1" mode
    logprobs: Tensor  # (B, R) float32 log π_old
    ref_logprobs: Tensor  # (B, R) float32 log π_ref
    values: Optional[Tensor]  # (B, R) float32 V_old; None without a critic
    rewards: Tensor  # (B, R) float32 shaped per-token rewards
    advantages: Tensor  # (B, R) float32 (whitened when configured)
    returns: Optional[Tensor]  # (B, R) float32 critic targets; None without a critic

    def select(self, idx: Tensor) -> "Experience":
        """Rows ``idx`` of every tensor field. Shapes: idx (b,) long → Experience with B = b."""
        return replace(
            self,
            **{f.name: (getattr(self, f.name)[idx] if getattr(self, f.name) is not None else None) for f in fields(self)},
        )

    @property
    def batch_size(self) -> int:
        return int(self.query_response.shape[0])
