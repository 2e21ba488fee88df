"""Bootstrap confidence intervals on known cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.eval.stats import bootstrap_ci, paired_bootstrap_diff


def test_constant_data_has_zero_width():
    assert bootstrap_ci([0.1] * 50) == (0.1, 0.1, 0.1)
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert paired_bootstrap_diff([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) == (0.5, 0.5, 0.5)


def test_large_normal_sample_covers_true_mean():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=5000)
    mean, lo, hi = bootstrap_ci(x)
    assert mean == pytest.approx(x.mean())
    assert lo < 3.0 < hi
    half = 1.96 * 2.0 / np.sqrt(5000)  # the normal-theory half width
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = sum(lo < 0 < hi for lo, hi in (bootstrap_ci(rng.normal(0, 1, 200), n_boot=500, seed=i)[1:]
                                            for i in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_shift_of_one_gives_diff_around_one():
    rng = np.random.default_rng(2)
    before = rng.normal(0, 1, 400)
    after = before + 1 + rng.normal(0, 0.2, 400)
    diff, lo, hi = paired_bootstrap_diff(before, after)
    assert lo < 1.0 < hi and hi - lo < 0.1
    assert diff == pytest.approx(np.mean(after - before))
    # pairing matters: unpaired, the same data would give a far wider interval
    _, lo_unpaired, hi_unpaired = bootstrap_ci(after)
    assert (hi_unpaired - lo_unpaired) > 2 * (hi - lo)
    neg, lo_neg, hi_neg = paired_bootstrap_diff(after, before)
    assert (neg, lo_neg, hi_neg) == pytest.approx((-diff, -hi, -lo), abs=1e-12)


def test_seed_and_alpha():
    x = np.random.default_rng(3).exponential(size=100)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    _, lo90, hi90 = bootstrap_ci(x, alpha=0.1)
    _, lo99, hi99 = bootstrap_ci(x, alpha=0.01)
    assert lo99 < lo90 < hi90 < hi99


def test_results_are_plain_floats_and_named():
    ci = bootstrap_ci([1, 2, 3, 4])
    assert all(type(v) is float for v in ci)
    assert ci.mean == 2.5 and ci.lo <= ci.hi


@pytest.mark.parametrize("call, message", [
    (lambda: bootstrap_ci([]), "values is empty"),
    (lambda: bootstrap_ci([1.0, float("nan")]), "NaN or infinite"),
    (lambda: bootstrap_ci([1.0, 2.0], alpha=1.5), "0 < alpha < 1"),
    (lambda: bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot >= 1"),
    (lambda: paired_bootstrap_diff([1.0, 2.0], [1.0]), "equal lengths, got 2 and 1"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_large_input_is_chunked():
    x = np.random.default_rng(4).normal(size=50_000)
    mean, lo, hi = bootstrap_ci(x, n_boot=300)
    assert lo < mean < hi and hi - lo < 0.05


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40), st.integers(0, 10))
def test_interval_within_data_range(values, seed):
    mean, lo, hi = bootstrap_ci(values, n_boot=200, seed=seed)
    tol = 1e-6 * (1 + max(abs(v) for v in values))
    assert min(values) - tol <= lo <= hi <= max(values) + tol
    assert min(values) - tol <= mean <= max(values) + tol


def test_paired_win_rate_counts_wins_and_half_ties():
    from tether.eval.stats import paired_win_rate

    assert paired_win_rate([0, 0, 0, 0], [1, 1, 1, 1]) == (1.0, 1.0, 1.0)
    assert paired_win_rate([1, 1], [1, 1]) == (0.5, 0.5, 0.5)
    w = paired_win_rate([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 4.0])  # win, tie, loss, win
    assert w.mean == pytest.approx(0.625) and 0.0 <= w.lo <= w.mean <= w.hi <= 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_win_rate([1.0], [1.0, 2.0])
