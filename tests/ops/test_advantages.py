"""Oracles for tether/ops/advantages.py: GAE identities (O12, G3 a–f) and the critic-free estimators (O25, K1–K4).

The GAE reference below is written from the definition A_t = Σ_l (γλ)^l δ_{t+l} (Schulman et al. 2015, eq. 16)
as a nested loop over Python floats, not from the recursion the implementation uses.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import ops

FAST = settings(max_examples=60, deadline=None)
unit = st.floats(0.0, 1.0, allow_nan=False)


def prefix_mask(lengths, r: int) -> torch.Tensor:
    return torch.arange(r).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)


def gae_reference(rewards, values, lengths, gamma, lam):
    """Pure-Python float64 GAE from the sum definition. Values after the last valid token count as 0."""
    adv, ret = [], []
    for r_row, v_row, n in zip(rewards, values, lengths):
        r_len = len(r_row)
        v_ext = [v_row[t] if t < n else 0.0 for t in range(r_len + 1)]
        deltas = [r_row[t] + gamma * v_ext[t + 1] - v_ext[t] for t in range(n)]
        a_row = []
        for t in range(r_len):
            if t >= n:
                a_row.append(0.0)
                continue
            a_row.append(math.fsum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)))
        adv.append(a_row)
        ret.append([a + (v_ext[t] if t < n else 0.0) for t, a in enumerate(a_row)])
    return adv, ret


@st.composite
def gae_inputs(draw, max_b: int = 5, max_r: int = 12):
    b = draw(st.integers(1, max_b))
    r = draw(st.integers(1, max_r))
    lengths = draw(st.lists(st.integers(1, r), min_size=b, max_size=b))
    val = st.floats(-5.0, 5.0, allow_nan=False)
    rewards = draw(st.lists(st.lists(val, min_size=r, max_size=r), min_size=b, max_size=b))
    values = draw(st.lists(st.lists(val, min_size=r, max_size=r), min_size=b, max_size=b))
    return rewards, values, lengths


# ---------------------------------------------------------------------------------------------- GAE


@FAST
@given(gae_inputs(), unit, unit)
def test_gae_matches_float64_loop(inputs, gamma, lam):
    """O12(d): ops.gae == the nested-loop definition, float64, 1e-12, over random shapes, masks, γ, λ."""
    rewards, values, lengths = inputs
    r_len = len(rewards[0])
    mask = prefix_mask(lengths, r_len)
    adv, ret = ops.gae(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), mask, gamma, lam
    )
    ref_adv, ref_ret = gae_reference(rewards, values, lengths, gamma, lam)
    assert adv.dtype == torch.float64 and ret.dtype == torch.float64
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64), rtol=0, atol=1e-12)


@FAST
@given(gae_inputs(), unit, unit)
def test_gae_matches_float64_loop_float32(inputs, gamma, lam):
    """The same in float32 (output float32). Inputs are |x| ≤ 5 and R ≤ 12, so |A| ≤ ~120 and the float32
    recursion's rounding is below 1e-5 absolute + 1e-6 relative; the reference runs on the same float32 values."""
    rewards, values, lengths = inputs
    r32 = torch.tensor(rewards, dtype=torch.float32)
    v32 = torch.tensor(values, dtype=torch.float32)
    mask = prefix_mask(lengths, len(rewards[0]))
    adv, ret = ops.gae(r32, v32, mask, gamma, lam)
    assert adv.dtype == torch.float32
    ref_adv, ref_ret = gae_reference(r32.double().tolist(), v32.double().tolist(), lengths, gamma, lam)
    torch.testing.assert_close(adv.double(), torch.tensor(ref_adv, dtype=torch.float64), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ret.double(), torch.tensor(ref_ret, dtype=torch.float64), rtol=1e-6, atol=1e-5)


@FAST
@given(gae_inputs())
def test_gae_lambda_gamma_one_is_reward_to_go_minus_value(inputs):
    """G3(a): λ = γ = 1 ⇒ A_t = Σ_{k≥t} r_k − V_t."""
    rewards, values, lengths = inputs
    mask = prefix_mask(lengths, len(rewards[0]))
    adv, _ = ops.gae(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), mask, 1.0, 1.0
    )
    for b, n in enumerate(lengths):
        for t in range(n):
            expected = math.fsum(rewards[b][t:n]) - values[b][t]
            assert adv[b, t].item() == pytest.approx(expected, abs=1e-12)


@FAST
@given(gae_inputs(), unit)
def test_gae_lambda_zero_is_one_step_td(inputs, gamma):
    """G3(b): λ = 0 ⇒ A_t = r_t + γ·V_{t+1} − V_t, with V = 0 after the last valid token."""
    rewards, values, lengths = inputs
    mask = prefix_mask(lengths, len(rewards[0]))
    adv, _ = ops.gae(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), mask, gamma, 0.0
    )
    for b, n in enumerate(lengths):
        for t in range(n):
            v_next = values[b][t + 1] if t + 1 < n else 0.0
            assert adv[b, t].item() == pytest.approx(rewards[b][t] + gamma * v_next - values[b][t], abs=1e-12)


@FAST
@given(gae_inputs(), unit)
def test_gae_lambda_one_returns_independent_of_values(inputs, gamma):
    """G3(c): λ = 1 ⇒ returns = Σ_k γ^{k−t} r_k, whatever V is."""
    rewards, values, lengths = inputs
    mask = prefix_mask(lengths, len(rewards[0]))
    r = torch.tensor(rewards, dtype=torch.float64)
    _, ret1 = ops.gae(r, torch.tensor(values, dtype=torch.float64), mask, gamma, 1.0)
    _, ret2 = ops.gae(r, torch.zeros_like(r) + 3.7, mask, gamma, 1.0)
    torch.testing.assert_close(ret1, ret2, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret1, ops.reward_to_go(r, mask, gamma), rtol=0, atol=1e-12)
    for b, n in enumerate(lengths):
        for t in range(n):
            expected = math.fsum(gamma ** (k - t) * rewards[b][k] for k in range(t, n))
            assert ret1[b, t].item() == pytest.approx(expected, abs=1e-12)


@FAST
@given(gae_inputs(), unit, unit, st.integers(1, 4), st.sampled_from([float("nan"), float("inf"), -1e30, 7.0]))
def test_gae_padding_invariance(inputs, gamma, lam, extra, garbage):
    """G3(e)/O8: appending pad columns (mask 0, any content, NaN and Inf included) changes nothing at valid tokens,
    and A = returns = 0 at every masked position."""
    rewards, values, lengths = inputs
    b, r_len = len(rewards), len(rewards[0])
    r = torch.tensor(rewards, dtype=torch.float64)
    v = torch.tensor(values, dtype=torch.float64)
    mask = prefix_mask(lengths, r_len)
    adv, ret = ops.gae(r, v, mask, gamma, lam)
    junk = torch.full((b, extra), garbage, dtype=torch.float64)
    r_pad = torch.cat([torch.where(mask, r, torch.tensor(garbage, dtype=torch.float64)), junk], dim=1)
    v_pad = torch.cat([torch.where(mask, v, torch.tensor(-garbage, dtype=torch.float64)), junk], dim=1)
    m_pad = torch.cat([mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    adv_pad, ret_pad = ops.gae(r_pad, v_pad, m_pad, gamma, lam)
    assert torch.equal(adv_pad[:, :r_len], adv)
    assert torch.equal(ret_pad[:, :r_len], ret)
    assert bool((adv_pad[~m_pad] == 0).all()) and bool((ret_pad[~m_pad] == 0).all())


@FAST
@given(gae_inputs())
def test_gae_score_only_gives_score_minus_value(inputs):
    """G3(f): β = 0, the score alone at ℓ, γ = λ = 1 ⇒ A_t = s − V_t for every t ≤ ℓ."""
    _, values, lengths = inputs
    b, r_len = len(values), len(values[0])
    mask = prefix_mask(lengths, r_len)
    scores = torch.linspace(-2.0, 3.0, b, dtype=torch.float64)
    kl = torch.randn(b, r_len, dtype=torch.float64)  # ignored at β = 0
    rewards = ops.shape_rewards(scores, kl, mask, kl_coef=0.0)
    v = torch.tensor(values, dtype=torch.float64)
    adv, ret = ops.gae(rewards, v, mask, 1.0, 1.0)
    expected = torch.where(mask, scores.unsqueeze(1) - v, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.where(mask, scores.unsqueeze(1), 0.0 * v), rtol=0, atol=1e-12)


def test_gae_hand_example():
    """A 3-token case worked by hand: r = (0, 0, 1), V = (0.5, 0.25, 0.75), γ = 1, λ = 0.5."""
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.25, 0.75]], dtype=torch.float64)
    adv, ret = ops.gae(r, v, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.5)
    # δ = (−0.25, 0.5, 0.25); A_2 = 0.25, A_1 = 0.5 + 0.125 = 0.625, A_0 = −0.25 + 0.3125 = 0.0625
    assert adv.tolist() == [[0.0625, 0.625, 0.25]]
    assert ret.tolist() == [[0.5625, 0.875, 1.0]]


def test_gae_bad_arguments_raise():
    x = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        ops.gae(x, x, m, gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        ops.gae(x, x, m, lam=-0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.gae(x, torch.zeros(2, 4), m)


# ---------------------------------------------------------------------------------------------- group baselines


@st.composite
def grouped_returns(draw, max_groups: int = 4, max_k: int = 6):
    n_groups = draw(st.integers(1, max_groups))
    k = draw(st.integers(2, max_k))
    vals = draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n_groups * k, max_size=n_groups * k))
    return torch.tensor(vals, dtype=torch.float64), k


@FAST
@given(grouped_returns())
def test_rloo_baseline_identity(data):
    """O25/K1: A_i = R_i − mean_{j≠i} R_j (a loop), = k/(k−1)·(R_i − mean R), and each group sums to 0."""
    returns, k = data
    adv = ops.rloo_advantages(returns, k)
    groups = returns.view(-1, k).tolist()
    loo = [r_i - math.fsum(g[:i] + g[i + 1 :]) / (k - 1) for g in groups for i, r_i in enumerate(g)]
    torch.testing.assert_close(adv, torch.tensor(loo, dtype=torch.float64), rtol=0, atol=1e-12)
    g = returns.view(-1, k)
    torch.testing.assert_close(adv, (k / (k - 1) * (g - g.mean(1, keepdim=True))).reshape(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv.view(-1, k).sum(1), torch.zeros(g.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_grpo_matches_formula():
    """K2: (R − mean)/(unbiased std + eps) within each group."""
    returns = torch.tensor([1.0, 2.0, 4.0, 0.0, -1.0, 3.0], dtype=torch.float64)
    adv = ops.grpo_advantages(returns, 3, eps=1e-6)
    expected = []
    for g in ([1.0, 2.0, 4.0], [0.0, -1.0, 3.0]):
        mean = sum(g) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / 2)  # unbiased, as in the GRPO paper and TRL
        expected += [(x - mean) / (std + 1e-6) for x in g]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    dr = ops.grpo_advantages(returns, 3, scale=False)
    torch.testing.assert_close(
        dr, torch.tensor([-4 / 3, -1 / 3, 5 / 3, -2 / 3, -5 / 3, 7 / 3], dtype=torch.float64), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.1, 0.7, 1 / 3, -2.2, 123.456])
@pytest.mark.parametrize("k", [2, 3, 5, 7, 8, 16])
def test_grpo_constant_group_zero_advantage(dtype, value, k):
    """O25/K2: a group whose rewards are all equal gets exactly 0 (GRPO and Dr. GRPO), next to a normal group.

    This used to fail: the rounded group mean differs from the members by an ulp, and ulp/(std + eps) with
    std ≈ 1e-7 gave advantages up to 0.8 in float32."""
    returns = torch.cat([torch.full((k,), value, dtype=dtype), torch.arange(k, dtype=dtype)])
    for scale in (True, False):
        adv = ops.grpo_advantages(returns, k, scale=scale)
        assert torch.equal(adv[:k], torch.zeros(k, dtype=dtype))
        assert bool((adv[k:] != 0).any())


@FAST
@given(grouped_returns(), st.floats(0.1, 10.0), st.floats(-50.0, 50.0))
def test_grpo_affine_invariance(data, a, b):
    """O25/K2–K3: GRPO advantages are invariant under R → a·R + b (a > 0); Dr. GRPO advantages scale by a.
    eps = 0 here (eps breaks exact scale invariance by design); groups are kept non-constant."""
    returns, k = data
    g = returns.view(-1, k)
    if bool((g.std(1) < 1e-3).any()):
        return
    moved = a * returns + b
    torch.testing.assert_close(
        ops.grpo_advantages(moved, k, eps=0.0), ops.grpo_advantages(returns, k, eps=0.0), rtol=0, atol=1e-9
    )
    torch.testing.assert_close(
        ops.grpo_advantages(moved, k, scale=False), a * ops.grpo_advantages(returns, k, scale=False), rtol=0, atol=1e-9
    )


def _call(name, rewards, mask, scores=None, values=None, group_size=2, gamma=1.0, lam=1.0, eps=1e-6):
    return ops.ADVANTAGE_ESTIMATORS[name](
        rewards, values, mask, scores, gamma=gamma, lam=lam, group_size=group_size, eps=eps
    )


def _episode_batch(seed=0, b=8, r=6, beta=0.05):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, r + 1, (b,), generator=g)
    mask = prefix_mask(lengths, r)
    scores = torch.randn(b, generator=g, dtype=torch.float64)
    kl = torch.randn(b, r, generator=g, dtype=torch.float64) * 0.1
    rewards = ops.shape_rewards(scores, kl, mask, beta)
    return rewards, mask, scores, kl, lengths.tolist()


def test_registry_has_six_estimators():
    assert set(ops.ADVANTAGE_ESTIMATORS) == {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    assert ops.GROUP_ESTIMATORS == {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}
    assert ops.CRITIC_ESTIMATORS == {"gae"}


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_sequence_estimators_broadcast_over_valid_tokens(name):
    """K1–K3: the sequence return R_i = s_i − β Σ_t k_{i,t} gets one advantage, repeated at every valid token."""
    rewards, mask, scores, kl, _ = _episode_batch()
    adv, ret = _call(name, rewards, mask, scores, group_size=4)
    assert ret is None
    seq_returns = scores - 0.05 * (kl * mask).sum(1)
    per_seq = {
        "grpo": ops.grpo_advantages(seq_returns, 4),
        "dr_grpo": ops.grpo_advantages(seq_returns, 4, scale=False),
        "rloo": ops.rloo_advantages(seq_returns, 4),
    }[name]
    expected = torch.where(mask, per_seq.unsqueeze(1), torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def _whiten_list(xs):
    mean = math.fsum(xs) / len(xs)
    var = math.fsum((x - mean) ** 2 for x in xs) / len(xs)
    return [(x - mean) / math.sqrt(var + 1e-8) for x in xs]


def test_reinforce_pp_global_whitening():
    """K4: A_t = s − β Σ_{i≥t} k_i, whitened over every valid token of the batch: masked mean 0, var 1, pads 0."""
    rewards, mask, scores, kl, lengths = _episode_batch(seed=1)
    adv, ret = _call("reinforce_pp", rewards, mask, scores, group_size=1)
    assert ret is None
    assert bool((adv[~mask] == 0).all())
    assert abs(float(adv[mask].mean())) <= 1e-12
    assert float(adv[mask].var(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    raw = []
    for b, n in enumerate(lengths):
        for t in range(n):
            raw.append(scores[b].item() - 0.05 * math.fsum(kl[b, t:n].tolist()))
    torch.testing.assert_close(adv[mask], torch.tensor(_whiten_list(raw), dtype=torch.float64), rtol=0, atol=1e-10)


def test_reinforce_pp_single_token_equals_whitened_scores():
    """K4: β = 0 and one valid token per sequence ⇒ A equals the batch-whitened scores (biased variance)."""
    scores = torch.tensor([0.3, -1.2, 2.5, 0.0, 0.9], dtype=torch.float64)
    mask = prefix_mask([1] * 5, 4)
    rewards = ops.shape_rewards(scores, torch.randn(5, 4, dtype=torch.float64), mask, kl_coef=0.0)
    adv, _ = _call("reinforce_pp", rewards, mask, scores)
    torch.testing.assert_close(
        adv[:, 0], torch.tensor(_whiten_list(scores.tolist()), dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert bool((adv[:, 1:] == 0).all())


def test_reinforce_pp_baseline_subtracts_group_mean():
    """K4 baseline variant: subtract each group's mean score, then return-to-go and global whitening."""
    rewards, mask, scores, kl, lengths = _episode_batch(seed=2)
    adv, ret = _call("reinforce_pp_baseline", rewards, mask, scores, group_size=4)
    assert ret is None
    group_mean = scores.view(-1, 4).mean(1).repeat_interleave(4)
    raw = []
    for b, n in enumerate(lengths):
        for t in range(n):
            raw.append(scores[b].item() - group_mean[b].item() - 0.05 * math.fsum(kl[b, t:n].tolist()))
    torch.testing.assert_close(adv[mask], torch.tensor(_whiten_list(raw), dtype=torch.float64), rtol=0, atol=1e-10)
    assert bool((adv[~mask] == 0).all())
    # β = 0 and a constant score inside each group: nothing to learn, all advantages 0
    same = torch.tensor([1.0] * 4 + [-2.0] * 4, dtype=torch.float64)
    r0 = ops.shape_rewards(same, kl, mask, kl_coef=0.0)
    adv0, _ = _call("reinforce_pp_baseline", r0, mask, same, group_size=4)
    assert float(adv0.abs().max()) <= 1e-12


def test_gae_estimator_via_registry():
    rewards, mask, scores, _, _ = _episode_batch(seed=3)
    values = torch.randn(rewards.shape, dtype=torch.float64)
    adv, ret = _call("gae", rewards, mask, scores, values=values, gamma=1.0, lam=0.95)
    adv2, ret2 = ops.gae(rewards, values, mask, 1.0, 0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    with pytest.raises(ValueError, match="needs critic values"):
        _call("gae", rewards, mask, scores, values=None)


@pytest.mark.parametrize("name", sorted(ops.GROUP_ESTIMATORS))
def test_group_estimators_reject_group_size_one(name):
    """A group baseline with one sample per prompt is a silent no-op (every advantage 0); refuse it."""
    rewards, mask, scores, _, _ = _episode_batch()
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        _call(name, rewards, mask, scores, group_size=1)
    with pytest.raises(ValueError, match="not a multiple"):
        _call(name, rewards, mask, scores, group_size=3)  # 8 rows


def test_group_functions_reject_bad_group_size():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        ops.grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        ops.rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="not a multiple"):
        ops.rloo_advantages(torch.zeros(5), 2)
