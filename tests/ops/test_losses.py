"""Oracles for tether/ops/losses.py.

- clipped surrogate: first-minibatch property (O1, O26/K5), gradient sign table (O14/H1c), asymmetric clip,
  dual-clip bound, pad invariance (O8/H1d);
- clipped value loss (O13/G4);
- Bradley–Terry (O18/C3), DPO and IPO against float64 hand formulas;
- KL-in-loss and the entropy bonus.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import ops

FAST = settings(max_examples=60, deadline=None)


def prefix_mask(lengths, r: int) -> torch.Tensor:
    return torch.arange(r).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)


def log_sigmoid(x: float) -> float:
    """Stable float64 log σ(x) in plain Python."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------- policy loss


def _policy_batch(seed=0, b=4, r=6, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, r, v, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, v, (b, r), generator=g)
    advantages = torch.randn(b, r, generator=g, dtype=torch.float64)
    mask = prefix_mask([2, 6, 1, 4], r)
    return logits, tokens, advantages, mask


def test_first_minibatch_ratio_one_and_vanilla_pg_gradient():
    """O1 + O26/K5/H1(a,b): new == old logprobs ⇒ ratio_mean 1, clipfrac 0, approx_kl 0 exactly, loss = −mean(A),
    and ∇L = −masked_mean(A·∇log π), the vanilla policy gradient (float64, 1e-12)."""
    logits, tokens, advantages, mask = _policy_batch()
    theta = logits.clone().requires_grad_(True)
    new_logprobs = ops.logprobs_from_logits(theta, tokens, temperature=0.7)
    old_logprobs = new_logprobs.detach().clone()  # the rollout recomputed with the same forward path
    loss, stats = ops.clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask)
    assert stats["ratio_mean"].item() == 1.0
    assert stats["ratio_max"].item() == 1.0 and stats["ratio_min"].item() == 1.0
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert loss.item() == pytest.approx(-advantages[mask].mean().item(), abs=1e-15)
    loss.backward()
    # the vanilla PG loss, written independently: −Σ m·A·log π / Σ m, with log π from a plain log_softmax
    theta_ref = logits.clone().requires_grad_(True)
    logp = F.log_softmax(theta_ref / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (-(advantages * logp * mask).sum() / mask.sum()).backward()
    assert float(theta_ref.grad.abs().max()) > 1e-3
    torch.testing.assert_close(theta.grad, theta_ref.grad, rtol=0, atol=1e-12)


def test_first_minibatch_whitened_advantages_give_zero_loss():
    """O1: with masked-whitened advantages and token-mean aggregation the first-minibatch loss is ≈ 0
    (N+ reference log: pg_loss −1.02e−08)."""
    logits, tokens, advantages, mask = _policy_batch(seed=1)
    lp = ops.logprobs_from_logits(logits, tokens)
    loss, _ = ops.clipped_policy_loss(lp, lp.clone(), ops.masked_whiten(advantages, mask), mask)
    assert abs(loss.item()) <= 1e-12


def _single_token_grad(advantage, ratio, **kw):
    x = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, stats = ops.clipped_policy_loss(
        x,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([[advantage]], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.bool),
        **kw,
    )
    loss.backward()
    return loss.item(), x.grad.item(), stats["clipfrac"].item()


@pytest.mark.parametrize(
    "advantage, ratio, zero_grad, expected_loss",
    [
        (+1.0, 1.5, True, -1.2),  # A > 0, ρ > 1+ε: clipped, no gradient
        (-1.0, 0.5, True, 0.8),  # A < 0, ρ < 1−ε: clipped, no gradient
        (+1.0, 0.5, False, -0.5),  # A > 0, ρ < 1−ε: the pessimistic bound does not clip
        (-1.0, 1.5, False, 1.5),  # A < 0, ρ > 1+ε: not clipped either
        (+2.0, 1.1, False, -2.2),  # inside the band
        (-2.0, 0.9, False, 1.8),
    ],
)
def test_clipped_surrogate_gradient_sign_table(advantage, ratio, zero_grad, expected_loss):
    """O14/H1(c): which cells of the (sign A, ρ vs band) table carry gradient; d/dlog ρ of −A·ρ is −A·ρ."""
    loss, grad, clipfrac = _single_token_grad(advantage, ratio)
    assert loss == pytest.approx(expected_loss, abs=1e-12)
    if zero_grad:
        assert grad == 0.0
        assert clipfrac == 1.0
    else:
        assert grad == pytest.approx(-advantage * ratio, abs=1e-12)
        assert grad != 0.0
        assert clipfrac == 0.0


def test_asymmetric_clip():
    """Clip-higher (DAPO): clip_low = 0.2, clip_high = 0.28 moves only the upper edge."""
    loss, grad, _ = _single_token_grad(+1.0, 1.25, clip_low=0.2, clip_high=0.28)
    assert grad == pytest.approx(-1.25, abs=1e-12)  # inside [0.8, 1.28]: still learning
    loss_sym, grad_sym, _ = _single_token_grad(+1.0, 1.25, clip_low=0.2)
    assert grad_sym == 0.0 and loss_sym == pytest.approx(-1.2, abs=1e-12)  # symmetric would have clipped
    loss, grad, clipfrac = _single_token_grad(+1.0, 1.3, clip_low=0.2, clip_high=0.28)
    assert grad == 0.0 and loss == pytest.approx(-1.28, abs=1e-12) and clipfrac == 1.0
    loss, grad, _ = _single_token_grad(-1.0, 0.75, clip_low=0.2, clip_high=0.28)
    assert grad == 0.0 and loss == pytest.approx(0.8, abs=1e-12)  # lower edge unchanged


def test_dual_clip_bound():
    """Dual clip (Ye et al. 2020), c = 3: a negative-advantage token's loss is at most c·|A|, with zero gradient
    beyond it; below the bound and for A > 0 nothing changes."""
    loss, grad, _ = _single_token_grad(-1.0, 5.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0, abs=1e-12) and grad == 0.0
    loss_plain, grad_plain, _ = _single_token_grad(-1.0, 5.0)
    assert loss_plain == pytest.approx(5.0, abs=1e-12) and grad_plain != 0.0
    loss, grad, _ = _single_token_grad(-1.0, 2.0, dual_clip=3.0)
    assert loss == pytest.approx(2.0, abs=1e-12) and grad == pytest.approx(2.0, abs=1e-12)
    assert _single_token_grad(+1.0, 5.0, dual_clip=3.0)[:2] == _single_token_grad(+1.0, 5.0)[:2]


@FAST
@given(
    st.lists(st.tuples(st.floats(-5, 5), st.floats(-4, 4)), min_size=1, max_size=12),
    st.floats(1.01, 10.0),
)
def test_dual_clip_bound_holds_for_all_inputs(pairs, c):
    """Per token, loss ≤ c·|A| when A < 0, and the loss with dual clip never exceeds the plain clipped loss."""
    adv = torch.tensor([[a for a, _ in pairs]], dtype=torch.float64)
    log_ratio = torch.tensor([[x for _, x in pairs]], dtype=torch.float64)
    mask = torch.ones_like(adv, dtype=torch.bool)
    zeros = torch.zeros_like(adv)
    for i in range(adv.shape[1]):
        one = (slice(None), slice(i, i + 1))
        with_dc, _ = ops.clipped_policy_loss(log_ratio[one], zeros[one], adv[one], mask[one], dual_clip=c)
        plain, _ = ops.clipped_policy_loss(log_ratio[one], zeros[one], adv[one], mask[one])
        a = adv[0, i].item()
        assert with_dc.item() <= plain.item() + 1e-12
        if a < 0:
            assert with_dc.item() <= c * abs(a) + 1e-12
        else:
            assert with_dc.item() == plain.item()


def test_clipped_policy_loss_pad_invariance():
    """O8/H1(d): pads hold garbage (huge log-ratios, NaN advantages): loss, stats and gradients are unchanged
    when pad columns are appended, and pads get zero gradient."""
    logits, tokens, advantages, mask = _policy_batch(seed=2)
    old = ops.logprobs_from_logits(logits, tokens)
    new_base = old + 0.3 * torch.randn(old.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x1 = new_base.clone().requires_grad_(True)
    loss1, stats1 = ops.clipped_policy_loss(x1, old, advantages, mask)
    loss1.backward()
    b = mask.shape[0]

    def pad(t, val):
        """Overwrite the existing pads with ``val`` and append three more columns of it."""
        return torch.cat(
            [torch.where(mask, t, torch.tensor(val, dtype=t.dtype)), torch.full((b, 3), val, dtype=t.dtype)], 1
        )

    x2 = pad(new_base, 50.0).requires_grad_(True)
    mask2 = torch.cat([mask, torch.zeros(b, 3, dtype=torch.bool)], 1)
    loss2, stats2 = ops.clipped_policy_loss(x2, pad(old, -50.0), pad(advantages, float("nan")), mask2)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss1.item(), abs=1e-14)
    for key in stats1:
        assert stats2[key].item() == pytest.approx(stats1[key].item(), abs=1e-14), key
    torch.testing.assert_close(x2.grad[:, :6][mask], x1.grad[mask], rtol=0, atol=1e-14)
    assert bool((x2.grad[~mask2] == 0).all())


def test_clipped_policy_loss_stats_hand_example():
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]], dtype=torch.float64))
    old = torch.zeros(1, 3, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    loss, stats = ops.clipped_policy_loss(new, old, adv, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3, abs=1e-15)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3, abs=1e-15)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-15)
    assert stats["ratio_max"].item() == pytest.approx(1.5, abs=1e-15)
    assert stats["ratio_min"].item() == pytest.approx(0.5, abs=1e-15)
    d = [math.log(1.5), math.log(0.5), 0.0]
    assert stats["approx_kl"].item() == pytest.approx(sum(0.5 * x * x for x in d) / 3, abs=1e-15)
    assert stats["approx_kl"].item() == pytest.approx(
        ops.approx_kl(new, old, torch.ones(1, 3, dtype=torch.bool)).item(), abs=1e-15
    )


# ---------------------------------------------------------------------------------------------- value loss


def test_value_loss_inside_band_equals_unclipped():
    """O13/G4: when |v − v_old| ≤ ε_v everywhere, the clipped loss equals ½·masked_mean((v − G)²), and the
    gradient is the unclipped one."""
    g = torch.Generator().manual_seed(3)
    old = torch.randn(4, 5, generator=g, dtype=torch.float64)
    new = old + (torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.5) * 0.39  # |Δ| < 0.195
    returns = torch.randn(4, 5, generator=g, dtype=torch.float64) * 2
    mask = prefix_mask([5, 1, 3, 4], 5)
    v1 = new.clone().requires_grad_(True)
    loss, stats = ops.clipped_value_loss(v1, old, returns, mask, clip=0.2)
    loss.backward()
    v2 = new.clone().requires_grad_(True)
    plain = 0.5 * ((v2 - returns) ** 2 * mask).sum() / mask.sum()
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), abs=1e-14)
    assert stats["clipfrac"].item() == 0.0
    torch.testing.assert_close(v1.grad, v2.grad, rtol=0, atol=1e-14)
    no_clip, _ = ops.clipped_value_loss(new, old, returns, mask, clip=None)
    assert no_clip.item() == pytest.approx(plain.item(), abs=1e-14)


def test_value_loss_zero_grad_outside_band():
    """O13/G4: v outside the band with the clipped branch the larger one ⇒ zero gradient; when the unclipped
    branch is the larger one the gradient is (v − G)."""
    old = torch.zeros(1, 2, dtype=torch.float64)
    v = torch.tensor([[0.5, 0.5]], dtype=torch.float64, requires_grad=True)  # both outside the 0.2 band
    returns = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    # token 0: unclipped (0.5)² = 0.25 < clipped (0.8)² = 0.64 → clipped branch, no gradient
    # token 1: unclipped (1.5)² = 2.25 > clipped (1.2)² = 1.44 → unclipped branch
    loss, stats = ops.clipped_value_loss(v, old, returns, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25) / 2, abs=1e-14)
    assert v.grad[0, 0].item() == 0.0
    assert v.grad[0, 1].item() == pytest.approx(1.5 / 2, abs=1e-14)
    assert stats["clipfrac"].item() == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e6])
def test_value_loss_pad_garbage_gives_zero_gradient(garbage):
    """O8: non-finite garbage in old_values/returns at pads leaves the loss unchanged and gives those pads a zero
    (not NaN) gradient; a NaN there would reach every critic parameter through backprop."""
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    clean_old = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    clean_ret = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    dirty_old, dirty_ret = clean_old.clone(), clean_ret.clone()
    dirty_old[0, 2], dirty_ret[0, 2] = garbage, -garbage
    grads, losses = [], []
    for old, ret in ((clean_old, clean_ret), (dirty_old, dirty_ret)):
        v = torch.tensor([[0.5, 0.3, 0.0]], dtype=torch.float64, requires_grad=True)
        loss, _ = ops.clipped_value_loss(v, old, ret, mask)
        loss.backward()
        grads.append(v.grad)
        losses.append(loss.item())
    assert losses[1] == losses[0]
    assert torch.equal(grads[1], grads[0]) and grads[1][0, 2].item() == 0.0


# ---------------------------------------------------------------------------------------------- Bradley–Terry


def test_bradley_terry_equal_rewards_ln2():
    """O18/C3: L(Δ = 0) = ln 2."""
    for dtype, tol in ((torch.float32, 1e-7), (torch.float64, 1e-15)):
        r = torch.tensor([0.3, -2.0, 5.0], dtype=dtype)
        loss, stats = ops.bradley_terry_loss(r, r.clone())
        assert loss.item() == pytest.approx(math.log(2.0), abs=tol)
        assert stats["accuracy"].item() == 0.0  # ties are not wins


def test_bradley_terry_gradients():
    """O18/C3: ∂L/∂r_c = −σ(r_r − r_c)/N and ∂L/∂r_r = +σ(r_r − r_c)/N."""
    g = torch.Generator().manual_seed(4)
    rc = (torch.randn(7, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    rr = (torch.randn(7, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    loss, _ = ops.bradley_terry_loss(rc, rr)
    loss.backward()
    for i in range(7):
        s = 1.0 / (1.0 + math.exp(-(rr[i].item() - rc[i].item())))
        assert rc.grad[i].item() == pytest.approx(-s / 7, abs=1e-15)
        assert rr.grad[i].item() == pytest.approx(s / 7, abs=1e-15)


@FAST
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_bradley_terry_antisymmetry_and_shift(delta, shift):
    """O18/C3: L(Δ) − L(−Δ) = −Δ for a single pair; adding a constant to both rewards changes nothing."""

    def bt(c, r):
        return ops.bradley_terry_loss(torch.tensor([c], dtype=torch.float64), torch.tensor([r], dtype=torch.float64))[
            0
        ].item()

    assert bt(delta, 0.0) - bt(-delta, 0.0) == pytest.approx(-delta, abs=1e-12)
    assert bt(delta + shift, shift) == pytest.approx(bt(delta, 0.0), abs=1e-12)
    assert bt(delta, 0.0) == pytest.approx(-log_sigmoid(delta), abs=1e-12)


def test_bradley_terry_margin_and_accuracy():
    rc = torch.tensor([1.0, 0.0, 2.5], dtype=torch.float64)
    rr = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
    loss, stats = ops.bradley_terry_loss(rc, rr, margin=0.75)
    expected = sum(-log_sigmoid(c - r - 0.75) for c, r in zip(rc.tolist(), rr.tolist())) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-15)
    margins = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    loss, _ = ops.bradley_terry_loss(rc, rr, margin=margins)
    expected = sum(-log_sigmoid(c - r - m) for c, r, m in zip(rc.tolist(), rr.tolist(), margins.tolist())) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-15)
    assert stats["accuracy"].item() == pytest.approx(2 / 3, abs=1e-15)


# ---------------------------------------------------------------------------------------------- DPO / IPO


def _pref_batch(seed=5, n=6):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 40) for _ in range(4)]


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_matches_float64_formula(beta, label_smoothing):
    pc, pr, rc, rr = _pref_batch()
    loss, stats = ops.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)
    terms, hs = [], []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = (a - c) - (b - d)
        hs.append(h)
        terms.append(-(1 - label_smoothing) * log_sigmoid(beta * h) - label_smoothing * log_sigmoid(-beta * h))
    assert loss.item() == pytest.approx(math.fsum(terms) / len(terms), abs=1e-13)
    assert stats["reward_accuracy"].item() == pytest.approx(sum(h > 0 for h in hs) / len(hs), abs=1e-15)
    assert stats["reward_margin"].item() == pytest.approx(beta * math.fsum(hs) / len(hs), abs=1e-13)


def test_dpo_gradient():
    """∂L/∂log π(y_c) = −β·σ(−βh)/N for the sigmoid loss without smoothing."""
    pc, pr, rc, rr = _pref_batch(seed=6)
    pc = pc.clone().requires_grad_(True)
    loss, _ = ops.dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    for i in range(len(pc)):
        h = (pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item())
        assert pc.grad[i].item() == pytest.approx(-0.1 * math.exp(log_sigmoid(-0.1 * h)) / len(pc), abs=1e-15)


def test_ipo_formula():
    pc, pr, rc, rr = _pref_batch(seed=7)
    beta = 0.1
    loss, _ = ops.dpo_loss(pc, pr, rc, rr, beta=beta, kind="ipo")
    terms = [
        ((a - c) - (b - d) - 1 / (2 * beta)) ** 2
        for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())
    ]
    assert loss.item() == pytest.approx(math.fsum(terms) / len(terms), abs=1e-10)
    assert ops.ipo_loss(pc, pr, rc, rr, beta=beta)[0].item() == loss.item()


def test_dpo_policy_equals_ref_is_ln2():
    pc, pr, _, _ = _pref_batch(seed=8)
    loss, _ = ops.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-15)
    ipo, _ = ops.ipo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert ipo.item() == pytest.approx(25.0, abs=1e-12)  # (0 − 1/(2·0.1))²


# ---------------------------------------------------------------------------------------------- KL and entropy terms


def test_kl_loss_k3_value_and_gradient():
    """KL-in-loss (GRPO): 0 at policy == reference; otherwise the aggregated k3 with per-token gradient
    (1 − π_ref/π)/N (the k3 sample's gradient, ppo_details.md E5)."""
    g = torch.Generator().manual_seed(10)
    ref = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 3
    mask = prefix_mask([4, 2, 3], 4)
    assert ops.kl_loss(ref.clone(), ref, mask).item() == 0.0
    new = (ref + torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    loss = ops.kl_loss(new, ref, mask)
    loss.backward()
    log_r = ref - new.detach()
    assert loss.item() == pytest.approx(((log_r.exp() - 1 - log_r) * mask).sum().item() / 9, abs=1e-14)
    expected = torch.where(mask, (1 - log_r.exp()) / 9, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(new.grad, expected, rtol=0, atol=1e-14)


def test_kl_loss_pad_garbage_gives_zero_gradient():
    """O8: a huge log-ratio at a pad, with no clamp, used to overflow exp() and give a NaN gradient there."""
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    new = torch.tensor([[-1.0, -2.0, -1000.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, 1000.0]], dtype=torch.float64)
    loss = ops.kl_loss(new, ref, mask, log_ratio_clamp=None)
    loss.backward()
    assert loss.item() == pytest.approx((math.exp(-0.5) - 1 + 0.5) / 2, abs=1e-15)
    assert new.grad[0, 2].item() == 0.0 and bool(torch.isfinite(new.grad).all())


def test_entropy_loss_is_negative_aggregate():
    ent = torch.tensor([[1.0, 2.0, 9.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    mask = prefix_mask([2, 3], 3)
    assert ops.entropy_loss(ent, mask).item() == pytest.approx(-12.0 / 5, abs=1e-15)


# ---------------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_raise():
    x = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    for kw, msg in (
        ({"clip_low": 0.0}, "clip_low"),
        ({"clip_low": -0.2}, "clip_low"),
        ({"clip_high": 0.0}, "clip_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"mode": "sum"}, "unknown aggregation mode"),
    ):
        with pytest.raises(ValueError, match=msg):
            ops.clipped_policy_loss(x, x, x, m, **kw)
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.clipped_policy_loss(x, x, torch.zeros(2, 4), m)
    with pytest.raises(ValueError, match="selects no elements"):
        ops.clipped_policy_loss(x, x, x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="value clip"):
        ops.clipped_value_loss(x, x, x, m, clip=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.clipped_value_loss(x, x, torch.zeros(3, 3), m)
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one pair"):
        ops.bradley_terry_loss(torch.zeros(0), torch.zeros(0))
    v = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        ops.dpo_loss(v, v, v, v, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.dpo_loss(v, v, v, v, label_smoothing=0.5)
    with pytest.raises(ValueError, match="unknown preference loss"):
        ops.dpo_loss(v, v, v, v, kind="hinge")
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.dpo_loss(v, v, v, torch.zeros(2))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        ops.kl_loss(x, x, m, estimator="k9")
