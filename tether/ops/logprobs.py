"""Token log-probabilities and entropy from logits, with temperature, chunked over positions.

The logits of a 50k–150k vocabulary are the largest tensor of a PPO step. ``log_softmax`` would make a second
full-size float32 copy; these functions work on ``chunk_size`` positions at a time so the extra memory is
``chunk_size × V`` floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tether.ops._checks import positive
from tether.ops.precision import compute_dtype

DEFAULT_CHUNK = 1024


def _check(logits: Tensor, temperature: float, chunk_size: int) -> None:
    positive(temperature, "temperature")
    positive(chunk_size, "chunk_size")
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., V), got shape {tuple(logits.shape)}")


def logprobs_from_logits(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """``log_softmax(logits / T)[token]`` for each position, computed in float32.

    Shapes: logits (..., L, V) any float dtype; tokens (..., L) long → (..., L) float32 (float64 if logits are).
    The logits must already be aligned with the tokens they score: for a causal LM the response slice is
    ``logits[:, Q-1:-1]`` (ppo_details.md §0).
    Reference: ppo_details.md E1 (divide by the sampling temperature), E8 (fp32).
    Oracle: tests/ops/test_logprobs.py::test_chunked_equals_naive
    """
    _check(logits, temperature, chunk_size)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)} cannot score tokens {tuple(tokens.shape)}"
        )
    vocab = logits.shape[-1]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}), got [{int(tokens.min())}, {int(tokens.max())}]")
    dtype = compute_dtype(logits)
    flat_logits = logits.reshape(-1, vocab)
    flat_tokens = tokens.reshape(-1)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        x = flat_logits[start : start + chunk_size].to(dtype)
        if temperature != 1.0:
            x = x / temperature
        picked = x.gather(-1, flat_tokens[start : start + chunk_size].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(x, dim=-1))
    if not out:
        return flat_logits.new_zeros(tokens.shape, dtype=dtype)
    return torch.cat(out).view(tokens.shape)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Entropy of ``softmax(logits / T)`` at each position, in nats, computed in float32.

    Shapes: logits (..., L, V) → (..., L) float32 (float64 if logits are).
    Uses ``H = logsumexp(x) − Σ softmax(x)·x``.
    Oracle: tests/ops/test_logprobs.py::test_entropy_matches_definition
    """
    _check(logits, temperature, chunk_size)
    vocab = logits.shape[-1]
    dtype = compute_dtype(logits)
    flat = logits.reshape(-1, vocab)
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        x = flat[start : start + chunk_size].to(dtype)
        if temperature != 1.0:
            x = x / temperature
        lse = torch.logsumexp(x, dim=-1)
        # A −inf logit (a banned or padded vocabulary entry) has p = 0 and contributes 0; 0·(−inf) would be NaN.
        finite_x = torch.where(torch.isneginf(x), torch.zeros((), dtype=x.dtype, device=x.device), x)
        out.append(lse - (torch.softmax(x, dim=-1) * finite_x).sum(-1))
    if not out:
        return flat.new_zeros(logits.shape[:-1], dtype=dtype)
    return torch.cat(out).view(logits.shape[:-1])
