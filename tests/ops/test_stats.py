"""Oracles for tether/ops/stats.py: explained variance (G6), the per-sequence KL (E6), approx KL (H1)."""

from __future__ import annotations

import math

import pytest
import torch

from tether import ops


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    returns = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2 + 1
    values = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([7, 1, 4, 3, 6]).unsqueeze(1)
    return returns, values, mask


def test_explained_variance_perfect_critic_is_one():
    returns, _, mask = _batch()
    garbage = torch.where(mask, returns, torch.tensor(1e9, dtype=torch.float64))  # pads differ wildly
    assert ops.explained_variance(garbage, returns, mask).item() == pytest.approx(1.0, abs=1e-15)


def test_explained_variance_constant_mean_predictor_is_zero():
    returns, _, mask = _batch(1)
    mean = returns[mask].mean()
    values = torch.where(mask, mean, torch.tensor(-7.0, dtype=torch.float64))
    assert ops.explained_variance(values, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # any other constant is also "no better than a constant": Var(G − c) = Var(G)
    assert ops.explained_variance(torch.full_like(returns, 3.0), returns, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_explained_variance_masked_hand_formula():
    returns, values, mask = _batch(2)
    g_list, v_list = returns[mask].tolist(), values[mask].tolist()

    def var(xs):
        m = math.fsum(xs) / len(xs)
        return math.fsum((x - m) ** 2 for x in xs) / len(xs)

    expected = 1.0 - var([g - v for g, v in zip(g_list, v_list)]) / var(g_list)
    assert ops.explained_variance(values, returns, mask).item() == pytest.approx(expected, abs=1e-12)
    # a worse-than-constant critic goes negative; constant returns give 0, not NaN
    assert ops.explained_variance(-returns, returns, mask).item() == pytest.approx(-3.0, abs=1e-12)
    assert ops.explained_variance(values, torch.ones_like(returns), mask).item() == 0.0


def test_mean_sequence_kl_equals_manual_row_sums():
    """E6: objective/kl = mean over rows of Σ_t m·k (nats per sequence)."""
    _, kl, mask = _batch(3)
    kl = torch.where(mask, kl, torch.tensor(float("nan"), dtype=torch.float64))
    rows = [math.fsum(kl[b, :n].tolist()) for b, n in enumerate(mask.sum(1).tolist())]
    torch.testing.assert_close(ops.sequence_sum(kl, mask), torch.tensor(rows, dtype=torch.float64), rtol=0, atol=1e-14)
    assert ops.mean_sequence_kl(kl, mask).item() == pytest.approx(math.fsum(rows) / len(rows), abs=1e-14)


def test_approx_kl_is_k2():
    new, old, mask = _batch(4)
    got = ops.approx_kl(new, old, mask)
    assert got.dtype == torch.float64  # float64 in, float64 out (it used to drop to float32)
    d = (new - old)[mask].tolist()
    assert got.item() == pytest.approx(math.fsum(0.5 * x * x for x in d) / len(d), abs=1e-15)
    assert ops.approx_kl(new, new.clone(), mask).item() == 0.0


def test_bad_arguments_raise():
    returns, values, mask = _batch()
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.explained_variance(values[:, :1], returns, mask)  # would silently broadcast
    with pytest.raises(ValueError, match="selects no elements"):
        ops.explained_variance(values, returns, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.sequence_sum(values, mask[:, :3])
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.approx_kl(values, returns[:2], mask)
