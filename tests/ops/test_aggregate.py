"""Oracles for tether/ops/aggregate.py: micro-batch invariance of gradients (O16, I4) and the per-token weight
table for lengths 1 and 9 (O17, I3), plus the token losses that go through ``aggregate``.
"""

from __future__ import annotations

import pytest
import torch

from tether import ops

B, R, D = 6, 7, 3
LENGTHS = [1, 7, 3, 5, 2, 6]


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(R).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    feats = torch.randn(B, R, D, generator=g, dtype=torch.float64)
    feats = torch.where(mask.unsqueeze(-1), feats, torch.tensor(1e3, dtype=torch.float64))  # garbage at pads
    theta0 = torch.randn(R, D, generator=g, dtype=torch.float64)
    aux = torch.randn(B, R, generator=g, dtype=torch.float64)
    return mask, feats, theta0, aux


def _per_token(theta, feats, aux):
    """A per-token loss that depends non-linearly on the parameter tensor θ (R, D)."""
    z = (feats * theta.unsqueeze(0)).sum(-1)
    return torch.tanh(z) * aux + 0.5 * z.sin() ** 2


def _globals(mask):
    return {"num_tokens": float(mask.sum()), "num_seqs": float(mask.shape[0]), "max_len": float(mask.shape[1])}


def _grad_whole_and_split(loss_fn, theta0, split):
    """Gradient of loss_fn(rows=all) vs the sum over micro-batches of ``split`` rows (gradients accumulated)."""
    theta = theta0.clone().requires_grad_(True)
    whole = loss_fn(theta, slice(0, B))
    whole.backward()
    grad_whole = theta.grad.clone()
    theta = theta0.clone().requires_grad_(True)
    total = 0.0
    for start in range(0, B, split):
        part = loss_fn(theta, slice(start, start + split))
        part.backward()  # accumulate, as gradient accumulation does
        total = total + part.detach()
    return whole.detach(), grad_whole, total, theta.grad.clone()


@pytest.mark.parametrize("mode", ops.AGGREGATION_MODES)
@pytest.mark.parametrize("split", [1, 2, 3])
def test_micro_batch_invariance(mode, split):
    """O16: with the minibatch's global num_tokens/num_seqs/max_len, micro-batches of 1, 2 or 3 rows give the
    whole-minibatch loss and gradient (float64, 1e-12)."""
    mask, feats, theta0, aux = _setup()
    glob = _globals(mask)

    def loss_fn(theta, rows):
        per_token = _per_token(theta, feats[rows], aux[rows])
        return ops.aggregate(per_token, mask[rows], mode, **glob)

    whole, g_whole, total, g_split = _grad_whole_and_split(loss_fn, theta0, split)
    assert float(g_whole.abs().max()) > 1e-3  # a real gradient, not a vacuous comparison
    assert float(total) == pytest.approx(float(whole), abs=1e-12)
    torch.testing.assert_close(g_split, g_whole, rtol=0, atol=1e-12)


def test_micro_batch_local_normaliser_negative_control():
    """P10: normalising each micro-batch by its own token count and averaging the micro-batches (N+ with
    accelerate, the HF-Trainer bug class) changes the token-mean gradient when lengths vary, by far more than the
    1e-12 tolerance above; so the invariance test can fail."""
    mask, feats, theta0, aux = _setup()
    theta = theta0.clone().requires_grad_(True)
    ops.aggregate(_per_token(theta, feats, aux), mask, "token_mean").backward()
    g_whole = theta.grad.clone()
    theta = theta0.clone().requires_grad_(True)
    for start in range(0, B, 3):  # 11 and 13 valid tokens (2-row micro-batches happen to hold 8 each)
        rows = slice(start, start + 3)
        local = ops.aggregate(_per_token(theta, feats[rows], aux[rows]), mask[rows], "token_mean")  # local count
        (local / (B // 3)).backward()
    assert float((theta.grad - g_whole).abs().max()) > 1e-3  # here about 7e-3, nine orders above 1e-12


@pytest.mark.parametrize("mode", ops.AGGREGATION_MODES)
@pytest.mark.parametrize("split", [1, 2, 3])
def test_micro_batch_invariance_of_token_losses(mode, split):
    """O16 through the losses themselves: clipped policy loss (with clipping active), clipped value loss,
    entropy bonus and KL-in-loss accept the same global normalisers and stay invariant."""
    mask, feats, theta0, aux = _setup(seed=1)
    glob = _globals(mask)
    g = torch.Generator().manual_seed(5)
    old_logprobs = -torch.rand(B, R, generator=g, dtype=torch.float64) * 2
    ref_logprobs = -torch.rand(B, R, generator=g, dtype=torch.float64) * 2
    advantages = torch.randn(B, R, generator=g, dtype=torch.float64)
    old_values = torch.randn(B, R, generator=g, dtype=torch.float64)
    returns = torch.randn(B, R, generator=g, dtype=torch.float64)

    def loss_fn(theta, rows):
        z = (feats[rows] * theta.unsqueeze(0)).sum(-1)
        new_logprobs = old_logprobs[rows] + 0.4 * torch.tanh(z)  # ratios in [e^−0.4, e^0.4]: some clipped
        new_values = old_values[rows] + 0.5 * torch.sin(z)
        m = mask[rows]
        pg, _ = ops.clipped_policy_loss(new_logprobs, old_logprobs[rows], advantages[rows], m, mode=mode, **glob)
        vf, _ = ops.clipped_value_loss(new_values, old_values[rows], returns[rows], m, mode=mode, **glob)
        ent = ops.entropy_loss(z.cos() ** 2, m, mode=mode, **glob)
        kl = ops.kl_loss(new_logprobs, ref_logprobs[rows], m, mode=mode, **glob)
        return pg + 0.1 * vf + 0.01 * ent + 0.05 * kl

    whole, g_whole, total, g_split = _grad_whole_and_split(loss_fn, theta0, split)
    assert float(g_whole.abs().max()) > 1e-3
    assert float(total) == pytest.approx(float(whole), abs=1e-12)
    torch.testing.assert_close(g_split, g_whole, rtol=0, atol=1e-12)


def _weights(mode, **kw):
    """Per-token weights = gradient of the aggregated loss wrt an all-equal per-token loss."""
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([1, 9]).unsqueeze(1)
    per_token = torch.ones(2, 9, dtype=torch.float64, requires_grad=True)
    ops.aggregate(per_token, mask, mode, **kw).backward()
    return per_token.grad


def test_aggregation_weight_table():
    """O17 / I3: sequences of lengths 1 and 9 with equal per-token loss.
    token-mean 0.1 / 0.1; seq-mean-token-mean 0.5 / 0.0556; Dr. GRPO (max_len 9) 0.0556 / 0.0556."""
    table = {
        "token_mean": (1 / 10, 1 / 10),
        "seq_mean_token_mean": (1 / 2, 1 / 18),
        "seq_mean_token_sum": (1 / 2, 1 / 2),
        "seq_mean_token_sum_norm": (1 / 18, 1 / 18),
    }
    printed = {
        "token_mean": (0.1, 0.1),
        "seq_mean_token_mean": (0.5, 0.0556),
        "seq_mean_token_sum_norm": (0.0556, 0.0556),
    }
    for mode, (w_short, w_long) in table.items():
        grad = _weights(mode, max_len=9)
        assert grad[0, 0].item() == pytest.approx(w_short, abs=1e-15), mode
        torch.testing.assert_close(grad[1], torch.full((9,), w_long, dtype=torch.float64), rtol=0, atol=1e-15)
        assert bool((grad[0, 1:] == 0).all()), mode  # pads get no weight
        if mode in printed:
            assert grad[0, 0].item() == pytest.approx(printed[mode][0], abs=5e-5)
            assert grad[1, 0].item() == pytest.approx(printed[mode][1], abs=5e-5)


def test_aggregate_hand_values_and_pads_ignored():
    per_token = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 4.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert ops.aggregate(per_token, mask, "token_mean").item() == pytest.approx(15 / 5, abs=1e-15)
    assert ops.aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx((1.5 + 4.0) / 2, abs=1e-15)
    assert ops.aggregate(per_token, mask, "seq_mean_token_sum").item() == pytest.approx((3 + 12) / 2, abs=1e-15)
    assert ops.aggregate(per_token, mask, "seq_mean_token_sum_norm").item() == pytest.approx(15 / 6, abs=1e-15)
    assert ops.aggregate(per_token, mask, "seq_mean_token_sum_norm", max_len=10).item() == pytest.approx(
        15 / 20, abs=1e-15
    )
    # appended pad columns change nothing (O8), except the default max_len, which is the column count
    wide = torch.cat([per_token, torch.full((2, 2), 99.0, dtype=torch.float64)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    for mode in ops.AGGREGATION_MODES:
        assert ops.aggregate(wide, wide_mask, mode, max_len=3).item() == ops.aggregate(per_token, mask, mode).item()


def test_aggregate_bad_arguments_raise():
    x = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        ops.aggregate(x, m, "seq_mean")
    with pytest.raises(ValueError, match="selects no elements"):
        ops.aggregate(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.aggregate(x, torch.ones(2, 4, dtype=torch.bool))
    for kw in ({"num_tokens": 0}, {"num_seqs": -1}, {"max_len": 0}):
        with pytest.raises(ValueError, match="must be > 0"):
            ops.aggregate(x, m, **kw)
