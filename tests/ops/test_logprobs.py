"""Oracles for tether/ops/logprobs.py: chunked, tempered token log-probabilities and entropy.

References: ppo_details.md §0 (logp[b, t]), E1 (divide by T), E8 (fp32).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tether import ops

B, L, V = 3, 11, 17
CHUNKS = [1, 3, 4, 7, 33, 1024]  # 1; sizes that do not divide B·L = 33; exactly B·L; larger than B·L
TEMPERATURES = [0.3, 0.7, 1.0, 2.5]


def _inputs(dtype=torch.float64, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    tokens = torch.randint(0, V, (B, L), generator=g)
    return logits, tokens


def _naive(logits, tokens, temperature):
    return F.log_softmax(logits / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_chunked_equals_naive(chunk_size, temperature):
    logits, tokens = _inputs()
    got = ops.logprobs_from_logits(logits, tokens, temperature=temperature, chunk_size=chunk_size)
    assert got.dtype == torch.float64 and got.shape == (B, L)
    torch.testing.assert_close(got, _naive(logits, tokens, temperature), rtol=0, atol=1e-12)
    # float32 logits: float32 out, within 1e-6 of the naive float32 computation. At T = 0.3 some logprobs are
    # ≈ −32, where one float32 ulp is 3.8e-6, so the bound is 1e-6 absolute plus 1e-6 relative (≈ 8 ulp).
    l32 = logits.float()
    got32 = ops.logprobs_from_logits(l32, tokens, temperature=temperature, chunk_size=chunk_size)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, _naive(l32, tokens, temperature), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_chunked_gradient_equals_naive(chunk_size, temperature):
    logits, tokens = _inputs(seed=1)
    weights = torch.randn(B, L, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = logits.clone().requires_grad_(True)
    (ops.logprobs_from_logits(a, tokens, temperature, chunk_size) * weights).sum().backward()
    b = logits.clone().requires_grad_(True)
    (_naive(b, tokens, temperature) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_temperature_is_applied():
    """E1: dividing by T matters; uniform logits give −log V at any T, a two-logit case has a closed form."""
    logits = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    tokens = torch.tensor([[1]])
    for t in (0.5, 0.7, 1.0, 2.0):
        expected = -math.log1p(math.exp(-1.0 / t))  # log σ(1/T)
        assert float(ops.logprobs_from_logits(logits, tokens, temperature=t)) == pytest.approx(expected, abs=1e-15)
    uniform = torch.zeros(2, 3, V, dtype=torch.float64)
    lp = ops.logprobs_from_logits(uniform, torch.zeros(2, 3, dtype=torch.long), temperature=0.7)
    torch.testing.assert_close(lp, torch.full((2, 3), -math.log(V), dtype=torch.float64), rtol=0, atol=1e-15)


def test_low_precision_logits_computed_in_fp32():
    """E8: bf16 logits are upcast before log-softmax; the result is float32 and equals the fp32 computation."""
    logits, tokens = _inputs(dtype=torch.bfloat16)
    got = ops.logprobs_from_logits(logits, tokens, temperature=0.7, chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _naive(logits.float(), tokens, 0.7), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_entropy_matches_definition(chunk_size, temperature):
    logits, _ = _inputs(seed=3)
    got = ops.entropy_from_logits(logits, temperature=temperature, chunk_size=chunk_size)
    expected = torch.empty(B, L, dtype=torch.float64)
    for b in range(B):
        for t in range(L):
            z = [x / temperature for x in logits[b, t].tolist()]
            zmax = max(z)
            w = [math.exp(x - zmax) for x in z]
            total = math.fsum(w)
            expected[b, t] = -math.fsum(p / total * math.log(p / total) for p in w)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # uniform distribution: log V
    torch.testing.assert_close(
        ops.entropy_from_logits(torch.zeros(2, V, dtype=torch.float64), temperature=temperature),
        torch.full((2,), math.log(V), dtype=torch.float64),
        rtol=0,
        atol=1e-14,
    )


def test_entropy_with_banned_vocabulary_entries_is_finite():
    """A −inf logit has probability 0 and contributes 0·log 0 = 0 (it used to give NaN)."""
    logits = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]], dtype=torch.float64, requires_grad=True)
    h = ops.entropy_from_logits(logits)
    reference = ops.entropy_from_logits(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert float(h.detach()) == pytest.approx(float(reference), abs=1e-15)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_inputs():
    out = ops.logprobs_from_logits(torch.zeros(2, 0, V), torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 0)
    assert ops.entropy_from_logits(torch.zeros(2, 0, V)).shape == (2, 0)


def test_bad_arguments_raise():
    logits, tokens = _inputs()
    for t in (0.0, -0.7, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            ops.logprobs_from_logits(logits, tokens, temperature=t)
        with pytest.raises(ValueError, match="temperature"):
            ops.entropy_from_logits(logits, temperature=t)
    with pytest.raises(ValueError, match="token ids"):
        ops.logprobs_from_logits(logits, tokens.clone().fill_(V))
    with pytest.raises(ValueError, match="token ids"):
        ops.logprobs_from_logits(logits, tokens.clone().fill_(-1))
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.logprobs_from_logits(logits, tokens[:, :-1])
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.logprobs_from_logits(logits[:, 1:], tokens)  # the classic off-by-one slice
    with pytest.raises(ValueError, match="chunk_size"):
        ops.logprobs_from_logits(logits, tokens, chunk_size=0)
    with pytest.raises(ValueError, match="logits"):
        ops.entropy_from_logits(torch.zeros(V))
