"""A per-row seeded ancestral sampler over the model's KV cache: which completion a row draws depends only on its
own seed and its own prompt, never on the rows sampled beside it (issue 13).

Every completion row has its own ``torch.Generator``, seeded from (run seed, update, prompt index, sample index) by
:func:`row_seed`. Before the first step each row draws its ``R`` uniforms from that generator (on the CPU, so the
draws are the same on every device); at step ``t`` the row's token is the inverse CDF of softmax(logits / T) at
its ``t``-th uniform (:func:`inverse_cdf`, float64). Batch size, left padding, micro-batching and the split of
the prompts over processes therefore change none of the draws; the logits themselves agree across batch
compositions to float rounding, and a token changes only if a uniform falls within that rounding of a CDF step.

Sampling is pure: exactly softmax(logits / T), with none of a generation config's processors (ppo_details.md D1).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from tether.engine.optim import derive_seed
from tether.models.forward import position_ids_from_mask


def row_seed(seed: int, update: int, prompt_index: int, sample: int) -> int:
    """The seed of one completion row: run ``seed``, ``update`` (0-based), the prompt's index in the prompt set and
    the sample's index within the prompt's group (0 … samples_per_prompt − 1)."""
    return derive_seed(seed, f"sample/{update}/{prompt_index}", sample)


def rollout_seeds(seed: int, update: int, prompt_indices: Sequence[int], group_size: int,
                  seen: Optional[dict[int, int]] = None) -> list[int]:
    """The :func:`row_seed` of each row of ``prompt_indices`` × ``group_size`` samples (prompt-major). The j-th
    occurrence of a prompt in one update (a batch larger than the prompt set, or a refill of dynamic sampling) uses
    sample indices j·G … j·G + G − 1, so it draws new completions. ``seen``: occurrences so far in this update
    (prompt index → count), updated in place across calls."""
    seen = {} if seen is None else seen
    out = []
    for i in prompt_indices:
        j = seen.get(i, 0)
        seen[i] = j + 1
        out.extend(row_seed(seed, update, i, j * group_size + k) for k in range(group_size))
    return out


def row_uniforms(seeds: Sequence[int], steps: int) -> Tensor:
    """``steps`` uniforms in [0, 1) per row, each row from its own CPU generator seeded with ``seeds[i]``.
    Shapes: B seeds → (B, steps) float64. Row i is the same whatever the other seeds are."""
    out = torch.empty((len(seeds), steps), dtype=torch.float64)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        out[i] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out


def inverse_cdf(logits: Tensor, u: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """The token at uniform ``u`` of softmax(logits / T), and its log-probability, in float64.

    Shapes: logits (B, V) any float dtype, u (B,) in [0, 1) → tokens (B,) long, logprobs (B,) float64.
    The token is the smallest k with cdf[k] > u · cdf[V−1] (cdf: the cumulative sum of the probabilities), so a
    token of probability 0 is never drawn and P(token = k) = p_k exactly for a uniform u.
    Oracle: tests/rollout/test_sampler.py::test_inverse_cdf_hand_computed, ::test_inverse_cdf_frequencies
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.log_softmax(logits.to(torch.float64) / temperature, dim=-1)
    cdf = logp.exp().cumsum(-1)
    target = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether the forward of ``model`` (or of the model a PEFT wrapper holds) takes the argument ``name``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(inner.forward).parameters


@dataclass(frozen=True)
class Sampled:
    """What :func:`sample` drew."""

    tokens: Tensor  # (B, R) long; pad after a row's first EOS (when stopping at EOS) and past the last step
    logprobs: Tensor  # (B, R) float64; the sampler's log softmax(logits / T) of each drawn token, 0 where no draw
    steps: int  # tokens drawn per row = forward passes made (the prompt pass draws the first)


@torch.no_grad()
def sample(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, seeds: Sequence[int], *,
           response_length: int, temperature: float, eos_token_id: Optional[int], pad_token_id: int) -> Sampled:
    """Sample up to ``response_length`` tokens after each left-padded prompt row, one forward per token over the KV
    cache. ``eos_token_id=None``: every row runs to ``response_length``; else a row stops after its first EOS and
    the loop stops once every row has. Shapes: input_ids, attention_mask (B, Q); seeds B ints → :class:`Sampled`.
    """
    b = input_ids.shape[0]
    if len(seeds) != b:
        raise ValueError(f"sample: {len(seeds)} seeds for {b} rows")
    device = input_ids.device
    uniforms = row_uniforms(seeds, response_length).to(device)
    tokens = torch.full((b, response_length), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((b, response_length), dtype=torch.float64, device=device)
    mask = attention_mask.long()
    done = torch.zeros(b, dtype=torch.bool, device=device)
    ids, pos, cache, steps = input_ids, position_ids_from_mask(mask), None, 0
    last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}  # the prompt pass: no (B, Q, V)
    for t in range(response_length):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, **last)
        cache = out.cache
        if cache is None:  # decoding one token without its past would be silently wrong
            raise RuntimeError(f"sample: {type(model).__name__} returned no KV cache with use_cache=True")
        tok, lp = inverse_cdf(out.logits[:, -1], uniforms[:, t], temperature)
        tok = tok.masked_fill(done, pad_token_id)
        tokens[:, t] = tok
        logprobs[:, t] = lp.masked_fill(done, 0.0)
        steps += 1
        if eos_token_id is not None:
            done = done | (tok == eos_token_id)
            if bool(done.all()):
                break
        # the next position of each row is the number of tokens it attends to so far (its prompt's and the drawn)
        pos = mask.sum(1, keepdim=True)
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
        ids = tok.unsqueeze(1)
    return Sampled(tokens, logprobs, steps)
