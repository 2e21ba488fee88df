"""No-grad scoring passes over a rollout: reference log-probs and critic values."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tether.records import Rollout
from tether.rollout.generate import response_logprobs


@torch.no_grad()
def reference_logprobs(ref: nn.Module, rollout: Rollout, temperature: float, micro_batch_size: int) -> Tensor:
    """log π_ref of the response tokens at the sampling temperature (ppo_details.md E2); 0 at pads. (B, R)."""
    lp = response_logprobs(
        ref, rollout.query_response, rollout.attention_mask, rollout.query_length, temperature, micro_batch_size
    )
    return torch.where(rollout.response_mask, lp, 0.0)


def critic_values(critic: nn.Module, query_response: Tensor, attention_mask: Tensor, q: int) -> Tensor:
    """V(s_t) for each response token t: the critic output at columns ``[q-1 : -1]`` (ppo_details.md G2). (B, R)."""
    return critic(query_response, attention_mask)[:, q - 1 : -1]


@torch.no_grad()
def rollout_values(critic: nn.Module, rollout: Rollout, critic_mask: Tensor, micro_batch_size: int) -> Tensor:
    """Old values for a rollout, 0 outside the critic mask. (B, R)."""
    out = []
    for s in range(0, rollout.query_response.shape[0], micro_batch_size):
        out.append(
            critic_values(
                critic,
                rollout.query_response[s : s + micro_batch_size],
                rollout.attention_mask[s : s + micro_batch_size],
                rollout.query_length,
            )
        )
    return torch.where(critic_mask, torch.cat(out), 0.0)
