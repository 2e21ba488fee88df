"""Held-out intervals that resample prompts (and runs/seeds), not completions: hand-computable resampling
distributions, identical completions within a prompt, pairing per prompt, missing scores, and coverage on synthetic
data where prompts (and seeds) carry most of the variance."""

from __future__ import annotations

import numpy as np
import pytest

from tether.eval.stats import (bootstrap_ci, prompt_bootstrap_ci, prompt_bootstrap_diff, prompt_bootstrap_replicates,
                               prompt_win_rate, resample_weights)


def test_resample_weights_are_counts_of_n_draws():
    w = resample_weights(5, 1000, np.random.default_rng(0))
    assert w.shape == (1000, 5) and (w.sum(1) == 5).all() and (w >= 0).all()
    assert w.mean(0) == pytest.approx(np.ones(5), abs=0.1)  # each unit drawn once on average
    assert (resample_weights(1, 7, np.random.default_rng(0)) == 1).all()


def test_two_prompts_give_the_three_hand_computed_resamples():
    """Prompt means 0 and 1 (each from two identical completions): a resample of 2 prompts is {0,0}, {0,1} or
    {1,1}, so the replicates are exactly 0, 0.5, 1 with chances ¼, ½, ¼."""
    est, reps = prompt_bootstrap_replicates([[0.0, 0.0], [1.0, 1.0]], n_boot=20000, seed=1)
    assert est == 0.5
    values, counts = np.unique(reps, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)


def test_missing_scores_leave_the_mean_of_the_present_ones():
    """Prompt A has scores 0, 0 (and one missing), prompt B has 3 (and two missing): the estimate is the mean of
    the three present scores, 1; the resamples {A,A}, {A,B}, {B,B} give 0, 3/3 = 1 and 3."""
    nan = float("nan")
    est, reps = prompt_bootstrap_replicates([[0.0, 0.0, nan], [3.0, nan, nan]], n_boot=4000, seed=0)
    assert est == 1.0
    assert np.unique(reps).tolist() == [0.0, 1.0, 3.0]


def test_runs_are_an_outer_level():
    """Two runs (seeds) of one prompt scoring 0 and 2: the runs are resampled, giving 0, 1 or 2; with one run
    there is no run level and the interval is a point."""
    est, reps = prompt_bootstrap_replicates([[[0.0]], [[2.0]]], n_boot=4000, seed=0)
    assert est == 1.0 and np.unique(reps).tolist() == [0.0, 1.0, 2.0]
    assert prompt_bootstrap_ci([[5.0, 5.0]]) == (5.0, 5.0, 5.0)


def test_identical_completions_within_a_prompt_widen_the_interval():
    """20 prompts, 10 identical completions each: the completion bootstrap treats 200 values as independent and is
    about √10 too narrow; the prompt bootstrap matches the spread of the 20 prompt means (sd/√P)."""
    rng = np.random.default_rng(3)
    prompt_means = rng.normal(0.0, 1.0, 20)
    x = np.repeat(prompt_means[:, None], 10, axis=1)
    _, lo_c, hi_c = bootstrap_ci(x.reshape(-1), n_boot=4000, seed=0)
    mean, lo_p, hi_p = prompt_bootstrap_ci(x, n_boot=4000, seed=0)
    assert mean == pytest.approx(prompt_means.mean())
    assert (hi_p - lo_p) > 2.5 * (hi_c - lo_c)
    expected = 2 * 1.96 * prompt_means.std() / np.sqrt(20)
    assert hi_p - lo_p == pytest.approx(expected, rel=0.15)
    _, lo_m, hi_m = bootstrap_ci(prompt_means, n_boot=4000, seed=0)  # the 1-D bootstrap of the prompt means
    assert hi_p - lo_p == pytest.approx(hi_m - lo_m, rel=0.1)


def test_paired_per_prompt_cancels_prompt_difficulty():
    """b = a + 1 on every prompt, prompts differing by hundreds: the paired difference is 1 on every resample, while
    each method's own interval is hundreds wide. Completion order within a prompt does not matter."""
    rng = np.random.default_rng(0)
    base = 100.0 * np.arange(12)[:, None] + rng.normal(0, 1, (12, 3))
    a = base
    b = (base + 1.0)[:, ::-1]  # the same shifted scores, completions in another order
    d = prompt_bootstrap_diff(a, b, n_boot=2000)
    assert d.mean == pytest.approx(1.0) and d.lo == pytest.approx(1.0) and d.hi == pytest.approx(1.0)
    _, lo, hi = prompt_bootstrap_ci(a, n_boot=2000)
    assert hi - lo > 100
    with pytest.raises(ValueError, match="same prompts"):
        prompt_bootstrap_diff(a, b[:5])


def test_paired_difference_with_runs_is_not_paired_across_runs():
    """Method b has two runs that differ by a seed effect (+0 and +2 on every prompt); a has one. The difference is
    1 on average, and the interval spans the seed effect (resamples of b's runs give 0, 1 or 2)."""
    a = np.zeros((1, 6, 2))
    b = np.stack([np.zeros((6, 2)), np.full((6, 2), 2.0)])
    d = prompt_bootstrap_diff(a, b, n_boot=4000, alpha=0.1)
    assert d.mean == 1.0 and d.lo == 0.0 and d.hi == 2.0


def test_win_rate_counts_every_pair_of_a_prompts_completions():
    """Prompt 1: b's 1 against a's 0 and 2 → one win, one loss (½); prompt 2: b's 5 beats a's 4 and ties a's 5
    (¾). Over the four pairs: 5/8."""
    a = [[0.0, 2.0], [4.0, 5.0]]
    b = [[1.0], [5.0]]
    w = prompt_win_rate(a, b, n_boot=2000)
    assert w.mean == pytest.approx(5 / 8)
    assert 0.5 <= w.lo <= w.mean <= w.hi <= 0.75  # a resample is prompt 1 twice (½), both (5/8) or prompt 2 twice
    assert prompt_win_rate([[0.0, 0.0]], [[1.0, 2.0]]) == (1.0, 1.0, 1.0)
    assert prompt_win_rate([[1.0]], [[1.0]]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: prompt_bootstrap_ci([]), "must be|empty"),
    (lambda: prompt_bootstrap_ci([[1.0, float("inf")]]), "infinite"),
    (lambda: prompt_bootstrap_ci([[float("nan")]]), "no score"),
    (lambda: prompt_bootstrap_ci([1.0, 2.0]), "must be \\(prompts, completions\\)"),
    (lambda: prompt_bootstrap_ci([[1.0, 2.0]], alpha=0), "0 < alpha < 1"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _coverage(make, interval, truth, n_sets: int = 150) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for i in range(n_sets):
        _, lo, hi = interval(make(rng), i)
        hits += lo <= truth <= hi
    return hits / n_sets


def test_prompt_bootstrap_covers_when_prompts_carry_the_variance():
    """x[p, k] = μ + u_p + e_pk with u ~ N(0, 1) per prompt and e ~ N(0, 0.3) per completion, 30 prompts × 4: the
    95 % prompt interval covers μ about 95 % of the time; the completion interval (120 'independent' values) about
    half the time."""
    make = lambda rng: 2.0 + rng.normal(0, 1, (30, 1)) + rng.normal(0, 0.3, (30, 4))  # noqa: E731
    prompt = _coverage(make, lambda x, i: prompt_bootstrap_ci(x, n_boot=400, seed=i), 2.0)
    completion = _coverage(make, lambda x, i: bootstrap_ci(x.reshape(-1), n_boot=400, seed=i), 2.0)
    assert 0.88 <= prompt <= 1.0
    assert completion < 0.75


def test_seed_level_is_needed_when_seeds_vary():
    """x[r, p, k] = μ + s_r + u_p + e with a seed effect s ~ N(0, 1) (8 seeds) as large as the prompt effect: the
    runs × prompts bootstrap covers μ far more often than the prompt bootstrap that pools the seeds' completions
    (which ignores the seed level)."""
    def make(rng):
        return (rng.normal(0, 1, (8, 1, 1)) + rng.normal(0, 1, (1, 20, 1)) + rng.normal(0, 0.3, (8, 20, 2)))

    two_way = _coverage(make, lambda x, i: prompt_bootstrap_ci(x, n_boot=400, seed=i), 0.0, n_sets=120)
    pooled = _coverage(make, lambda x, i: prompt_bootstrap_ci(x.transpose(1, 0, 2).reshape(1, 20, 16), n_boot=400,
                                                               seed=i), 0.0, n_sets=120)
    assert two_way >= 0.8
    assert two_way > pooled + 0.2
