"""Oracles for tether/ops/rewards.py: score placement and the reward-sum identity (O7), missing-EOS penalty (O6),
reward whitening (F4).

References: ppo_details.md F1, D3, F4, §6.1.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import ops

FAST = settings(max_examples=60, deadline=None)


def prefix_mask(lengths: list[int], r: int) -> torch.Tensor:
    return torch.arange(r).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


@st.composite
def shaped_inputs(draw):
    """Scores, per-token KL and a prefix mask. Values are multiples of 1/8 with β a power of 2, so every sum in
    the reward identity is exact in float64 and the test can use ==."""
    b = draw(st.integers(1, 6))
    r = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(1, r), min_size=b, max_size=b))
    eighths = st.integers(-80, 80).map(lambda k: k / 8)
    scores = torch.tensor(draw(st.lists(eighths, min_size=b, max_size=b)), dtype=torch.float64)
    kl = torch.tensor(draw(st.lists(eighths, min_size=b * r, max_size=b * r)), dtype=torch.float64).view(b, r)
    beta = draw(st.sampled_from([0.0, 0.0625, 0.25, 1.0]))
    return scores, kl, prefix_mask(lengths, r), beta, lengths


def test_score_index_eos_and_eos_plus_one():
    """F1: ℓ in "eos" mode; ℓ+1 in "eos+1" mode, except ℓ when ℓ = R−1 (no room after it)."""
    mask = prefix_mask([1, 3, 5, 4], 5)  # ℓ = 0, 2, 4, 3
    assert ops.score_index(mask).tolist() == [0, 2, 4, 3]
    assert ops.score_index(mask, "eos+1").tolist() == [1, 3, 4, 4]
    crit = ops.critic_mask(mask, "eos+1")
    assert torch.equal(crit, prefix_mask([2, 4, 5, 5], 5))  # N+'s padding_mask_p1
    assert torch.equal(ops.critic_mask(mask, "eos"), mask)


@FAST
@given(shaped_inputs(), st.sampled_from(["eos", "eos+1"]))
def test_score_placed_once_and_sum_identity(inputs, placement):
    """O7: exactly one index per row receives the score (ℓ, or ℓ+1 in compat mode); Σ_t r_t = s − β Σ_t m·k exactly;
    r = 0 wherever the critic mask is 0."""
    scores, kl, mask, beta, lengths = inputs
    r_len = mask.shape[1]
    # garbage in the KL at pads must not leak into the rewards
    kl_garbage = torch.where(mask, kl, torch.tensor(float("nan"), dtype=kl.dtype))
    rewards = ops.shape_rewards(scores, kl_garbage, mask, beta, placement)
    assert rewards.dtype == torch.float64 and rewards.shape == mask.shape
    crit = ops.critic_mask(mask, placement)
    for b, length in enumerate(lengths):
        ell = length - 1
        expected_idx = ell if placement == "eos" or ell == r_len - 1 else ell + 1
        kl_part = [-beta * kl[b, t].item() if t <= ell else 0.0 for t in range(r_len)]
        score_part = [rewards[b, t].item() - kl_part[t] for t in range(r_len)]
        # the score sits at exactly one index, and only there (exact: all values are dyadic)
        assert score_part == [scores[b].item() if t == expected_idx else 0.0 for t in range(r_len)]
        assert rewards[b].sum().item() == scores[b].item() - beta * sum(kl[b, : ell + 1].tolist())
    assert bool((rewards[~crit] == 0).all())


def test_sum_identity_random_floats():
    """O7 with non-dyadic values: the identity holds to float64 rounding."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, generator=g, dtype=torch.float64)
    kl = torch.randn(5, 8, generator=g, dtype=torch.float64)
    mask = prefix_mask([1, 8, 3, 5, 7], 8)
    for placement in ("eos", "eos+1"):
        rewards = ops.shape_rewards(scores, kl, mask, 0.05, placement)
        torch.testing.assert_close(rewards.sum(1), scores - 0.05 * (kl * mask).sum(1), rtol=0, atol=1e-14)


def test_score_at_eos_hand_example():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.5, 1.0, -0.5, 9.0], [0.25, 0.25, 0.25, 0.25]])
    mask = prefix_mask([3, 4], 4)
    eos = ops.shape_rewards(scores, kl, mask, kl_coef=0.1)
    torch.testing.assert_close(
        eos, torch.tensor([[-0.05, -0.1, 2.05, 0.0], [-0.025, -0.025, -0.025, -1.025]]), rtol=0, atol=1e-7
    )
    eos1 = ops.shape_rewards(scores, kl, mask, kl_coef=0.1, placement="eos+1")
    torch.testing.assert_close(
        eos1, torch.tensor([[-0.05, -0.1, 0.05, 2.0], [-0.025, -0.025, -0.025, -1.025]]), rtol=0, atol=1e-7
    )


def test_beta_zero_and_equal_logprobs_leave_score_only():
    """B3/O5: policy == reference gives k = 0, so the rewards are the score at ℓ and 0 elsewhere."""
    logp = torch.randn(3, 6, dtype=torch.float64)
    kl = ops.kl_penalty(logp, logp.clone())
    mask = prefix_mask([2, 6, 4], 6)
    rewards = ops.shape_rewards(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), kl, mask, kl_coef=0.05)
    expected = torch.zeros(3, 6, dtype=torch.float64)
    expected[0, 1], expected[1, 5], expected[2, 3] = 1.0, 2.0, 3.0
    assert torch.equal(rewards, expected)


def test_missing_eos_penalty_subtract_and_replace():
    """O6/D3: rows without EOS get s − p (TRL) or −p (N+ with p = 1); rows with EOS are untouched."""
    scores = torch.tensor([0.5, 2.0, -3.0, 1.25], dtype=torch.float64)
    has_eos = torch.tensor([True, False, False, True])
    sub = ops.apply_missing_eos_penalty(scores, has_eos, 1.0, "subtract")
    assert sub.tolist() == [0.5, 1.0, -4.0, 1.25]
    rep = ops.apply_missing_eos_penalty(scores, has_eos, 1.0, "replace")
    assert rep.tolist() == [0.5, -1.0, -1.0, 1.25]
    with pytest.raises(ValueError, match="missing-EOS mode"):
        ops.apply_missing_eos_penalty(scores, has_eos, 1.0, "clip")
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.apply_missing_eos_penalty(scores, has_eos[:3], 1.0)


def test_missing_eos_end_to_end_with_truncation():
    """D2 + D3 together: a no-EOS row is fully valid, gets the penalty, and its score lands on the last column."""
    eos, pad = 2, 0
    responses = torch.tensor([[5, 2, 7, 7], [5, 5, 5, 5]])
    truncated = ops.truncate_after_eos(responses, eos, pad)
    mask, has_eos = ops.response_mask_from_eos(truncated, eos)
    scores = ops.apply_missing_eos_penalty(torch.tensor([0.75, 0.75]), has_eos, 1.0, "replace")
    rewards = ops.shape_rewards(scores, torch.zeros(2, 4), mask, 0.05)
    assert truncated.tolist() == [[5, 2, 0, 0], [5, 5, 5, 5]]
    assert rewards.tolist() == [[0.0, 0.75, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]


def test_whiten_rewards_keeps_mean_unit_variance_pads_zero():
    """F4: masked shift_mean=False whitening: var 1 (±1e-6), mean unchanged, pads 0."""
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3 + 0.7
    mask = prefix_mask([1, 6, 2, 3, 6, 5, 4, 2], 6)
    rewards = torch.where(mask, rewards, torch.tensor(123.0, dtype=torch.float64))
    out = ops.whiten_rewards(rewards, mask)
    assert bool((out[~mask] == 0).all())
    assert float(out[mask].mean()) == pytest.approx(float(rewards[mask].mean()), abs=1e-12)
    assert float(out[mask].var(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_clip_scores():
    s = torch.tensor([-20.0, -1.0, 0.0, 3.0, 11.0])
    assert ops.clip_scores(s, 10.0).tolist() == [-10.0, -1.0, 0.0, 3.0, 10.0]
    with pytest.raises(ValueError, match="score clip"):
        ops.clip_scores(s, 0.0)


def test_bad_arguments_raise():
    mask = prefix_mask([2, 3], 3)
    kl = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="scores must be"):
        ops.shape_rewards(torch.zeros(3), kl, mask, 0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.shape_rewards(torch.zeros(2), torch.zeros(2, 4), mask, 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        ops.shape_rewards(torch.zeros(2), kl, mask, -0.1)
    with pytest.raises(ValueError, match="score placement"):
        ops.shape_rewards(torch.zeros(2), kl, mask, 0.1, placement="last")
    with pytest.raises(ValueError, match="at least one valid token"):
        ops.score_index(prefix_mask([0, 3], 3))
    with pytest.raises(ValueError, match="prefix mask"):
        ops.score_index(torch.tensor([[True, False, True]]))


def test_overlong_penalty_hand_computed():
    """DAPO eq. 13 with L_max = 20, L_cache = 8: 0 up to 12 tokens, −(ℓ − 12)/8 · factor up to 20, −factor beyond."""
    lengths = torch.tensor([1, 12, 13, 16, 20, 21, 40])
    got = ops.overlong_penalty(lengths, 20, 8)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.125, -0.5, -1.0, -1.0, -1.0]))
    torch.testing.assert_close(ops.overlong_penalty(lengths, 20, 8, factor=0.5),
                               torch.tensor([0.0, 0.0, -0.0625, -0.25, -0.5, -0.5, -0.5]))
    # the buffer as long as the whole response: the penalty starts at the first token
    torch.testing.assert_close(ops.overlong_penalty(torch.tensor([0, 5, 10]), 10, 10), torch.tensor([0.0, -0.5, -1.0]))
    assert ops.overlong_penalty(lengths.double(), 20, 8).dtype == torch.float64
    for bad in [dict(max_length=20, buffer=0), dict(max_length=20, buffer=21), dict(max_length=20, buffer=4, factor=-1)]:
        with pytest.raises(ValueError):
            ops.overlong_penalty(lengths, **bad)


@FAST
@given(st.lists(st.integers(0, 64), min_size=1, max_size=16), st.integers(1, 64), st.floats(0.0, 3.0))
def test_overlong_penalty_is_monotone_and_bounded(lengths, buffer, factor):
    """Property: in [−factor, 0], non-increasing in the length, 0 at or below L_max − L_cache."""
    x = torch.tensor(sorted(lengths))
    p = ops.overlong_penalty(x, 64, buffer, factor)
    assert bool((p <= 0).all()) and bool((p >= -factor - 1e-6).all())
    assert bool((p[1:] <= p[:-1] + 1e-6).all())
    assert bool((p[x <= 64 - buffer] == 0).all())


def test_groups_with_signal():
    """A group carries signal unless all its scores are equal (exactly: a 1e-6 difference is signal)."""
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 2.0 + 1e-6])
    assert ops.groups_with_signal(scores, 2).tolist() == [False, True, False, True]
    assert ops.groups_with_signal(scores, 4).tolist() == [True, True]
    assert ops.groups_with_signal(torch.zeros(3), 1).tolist() == [False, False, False]
    with pytest.raises(ValueError, match="multiple of group_size"):
        ops.groups_with_signal(scores, 3)
