"""Percentile-bootstrap confidence intervals for a mean, a paired difference of means and a paired win rate (numpy
only)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_CHUNK = 1 << 22  # resampled values held in memory at once


class Interval(NamedTuple):
    mean: float
    lo: float
    hi: float


def _as_1d(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    means = np.empty(n_boot)
    rows = max(1, _CHUNK // x.size)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    return means


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(mean, lo, hi): the sample mean and the ``1 - alpha`` percentile-bootstrap interval of the mean."""
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    x = _as_1d(values, "values")
    if np.all(x == x[0]):  # exact, free of rounding in the resampled means
        return Interval(float(x[0]), float(x[0]), float(x[0]))
    means = _boot_means(x, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(lo), float(hi))


def paired_bootstrap_diff(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(mean_diff, lo, hi) of ``b - a`` for paired scores (e.g. before = ``a``, after = ``b`` on the same
    prompts): items are resampled as pairs, so the interval reflects the per-prompt change."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    return bootstrap_ci(b - a, n_boot=n_boot, alpha=alpha, seed=seed)


def paired_win_rate(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(win rate, lo, hi) of ``b`` over ``a`` for paired scores: the share of pairs with ``b > a``, ties counting a
    half, with the percentile-bootstrap interval over pairs. 0.5 means no preference either way."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    wins = np.where(b > a, 1.0, np.where(b == a, 0.5, 0.0))
    return bootstrap_ci(wins, n_boot=n_boot, alpha=alpha, seed=seed)
