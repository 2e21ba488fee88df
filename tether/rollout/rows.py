"""Rows of rollouts: keep some, join several (dynamic sampling builds its batch from the groups of several rounds)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from tether.records import Rollout


def select_rows(rollout: Rollout, rows: Tensor) -> Rollout:
    """The rows ``rows`` of ``rollout``. Shapes: rows (b,) long → a Rollout with B = b (same query length Q)."""
    keep = rows.tolist()
    return replace(rollout, query_response=rollout.query_response[rows], attention_mask=rollout.attention_mask[rows],
                   response_mask=rollout.response_mask[rows], has_eos=rollout.has_eos[rows],
                   logprobs=rollout.logprobs[rows],
                   values=rollout.values[rows] if rollout.values is not None else None,
                   prompts=[rollout.prompts[i] for i in keep], completions=[rollout.completions[i] for i in keep])


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """One rollout of the rows of ``rollouts`` in order, their queries left-padded to the longest Q (masked pads, so
    the mask-derived positions of every real token stay as they were). The log-probs are copied as they are: a
    caller that needs them from the joined batch's own forward recomputes them; values are dropped (None: the
    critic's scoring pass recomputes them on the joined batch)."""
    q = max(r.query_length for r in rollouts)

    def pad(r: Rollout, x: Tensor, value) -> Tensor:
        extra = q - r.query_length
        return torch.cat([x.new_full((x.shape[0], extra), value), x], dim=1) if extra else x

    return Rollout(
        query_response=torch.cat([pad(r, r.query_response, pad_token_id) for r in rollouts]),
        attention_mask=torch.cat([pad(r, r.attention_mask, False) for r in rollouts]),
        response_mask=torch.cat([r.response_mask for r in rollouts]),
        has_eos=torch.cat([r.has_eos for r in rollouts]),
        logprobs=torch.cat([r.logprobs for r in rollouts]),
        prompts=[p for r in rollouts for p in r.prompts],
        completions=[c for r in rollouts for c in r.completions],
        query_length=q,
    )
