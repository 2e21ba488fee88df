"""Percentile-bootstrap confidence intervals (numpy only).

Two families:

- over *items* (:func:`bootstrap_ci`, :func:`paired_bootstrap_diff`, :func:`paired_win_rate`): the values are
  independent draws, resampled one by one;
- over *prompts, and seeds where there are several* (:func:`prompt_bootstrap_ci`, :func:`prompt_bootstrap_diff`,
  :func:`prompt_win_rate`), for held-out evaluations: scores come as ``(runs, prompts, completions)``; a resample
  draws runs (seeds) and prompts with replacement, independently, and every completion of a drawn (run, prompt) cell
  comes along (a two-way "pigeonhole" bootstrap, Owen 2007, over the crossed runs × prompts design). Completions of
  one prompt are not independent draws — they share the prompt — so resampling them one by one gives intervals that
  are too narrow; resampling prompts does not. With one run the run level drops out (nothing to resample), and the
  interval is over prompts only: it then says nothing about seed-to-seed variation.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

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
    prompts): items are resampled as pairs, so the interval reflects the per-item change. Each pair is an independent
    item: for several completions per prompt use :func:`prompt_bootstrap_diff`."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    return bootstrap_ci(b - a, n_boot=n_boot, alpha=alpha, seed=seed)


def paired_win_rate(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(win rate, lo, hi) of ``b`` over ``a`` for paired scores: the share of pairs with ``b > a``, ties counting a
    half, with the percentile-bootstrap interval over pairs (each pair an independent item; for completions grouped
    by prompt use :func:`prompt_win_rate`). 0.5 means no preference either way."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    wins = np.where(b > a, 1.0, np.where(b == a, 0.5, 0.0))
    return bootstrap_ci(wins, n_boot=n_boot, alpha=alpha, seed=seed)


# ---------------------------------------------------------------------------------------- over prompts (and runs)


def _as_cells(values, name: str) -> np.ndarray:
    """``values`` as a float array ``(R, P, K)``: runs × prompts × completions, NaN marking a missing score."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must be (prompts, completions) or (runs, prompts, completions), got shape "
                         f"{x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if np.isinf(x).any():
        raise ValueError(f"{name} holds infinite values")
    if np.isnan(x).all():
        raise ValueError(f"{name} holds no score (all missing)")
    return x


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` counts: how often each of ``n`` units is drawn in each of ``n_boot`` resamples of size ``n``
    with replacement (each row sums to ``n``). One unit is always drawn once."""
    if n == 1:
        return np.ones((n_boot, 1))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _sums_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (run, prompt) cell: the sum of its present scores and how many there are, each ``(R, P)``."""
    present = ~np.isnan(x)
    return np.where(present, x, 0.0).sum(axis=2), present.sum(axis=2).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_mean(sums: np.ndarray, counts: np.ndarray, w_run: np.ndarray, w_prompt: np.ndarray) -> np.ndarray:
    """``(B,)``: for each resample b, ``Σ_rp w_run[b,r]·w_prompt[b,p]·sums[r,p] / Σ_rp (same with counts)``: the
    mean over every completion of the drawn cells (cells drawn twice count twice)."""
    num = ((w_run @ sums) * w_prompt).sum(axis=1)
    den = ((w_run @ counts) * w_prompt).sum(axis=1)
    return _ratio(num, den)


def prompt_bootstrap_replicates(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(estimate, replicates) of the mean score, resampling runs and prompts (see the module docstring).

    ``values``: ``(P, K)`` for one run or ``(R, P, K)`` for R runs (seeds) of one method, on the same P prompts with
    K completions each; NaN marks a missing score (left out of every mean). The estimate is the mean of the present
    scores (with no missing ones and K fixed: the mean over prompts of the per-prompt means, pooled over runs);
    ``replicates`` ``(n_boot,)`` holds the same statistic on each resample (NaN for a resample of only empty cells).
    """
    x = _as_cells(values, "values")
    sums, counts = _sums_counts(x)
    rng = np.random.default_rng(seed)
    w_run = resample_weights(x.shape[0], n_boot, rng)
    w_prompt = resample_weights(x.shape[1], n_boot, rng)
    est = float(sums.sum() / counts.sum())
    return est, _weighted_mean(sums, counts, w_run, w_prompt)


def _interval(est: float, reps: np.ndarray, alpha: float, constant: Optional[float] = None) -> Interval:
    if constant is not None:  # every score equal: exact, free of rounding in the resampled means
        return Interval(constant, constant, constant)
    lo, hi = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(est, float(lo), float(hi))


def _constant(x: np.ndarray) -> Optional[float]:
    v = x[~np.isnan(x)]
    return float(v[0]) if np.all(v == v[0]) else None


def prompt_bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(mean, lo, hi): the mean score and its ``1 − alpha`` percentile-bootstrap interval over prompts (and runs
    where ``values`` has several). ``values``: ``(P, K)`` or ``(R, P, K)``, NaN = missing
    (:func:`prompt_bootstrap_replicates`)."""
    _check(n_boot, alpha)
    x = _as_cells(values, "values")
    est, reps = prompt_bootstrap_replicates(x, n_boot, seed)
    return _interval(est, reps, alpha, _constant(x))


def prompt_bootstrap_diff(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(mean_b − mean_a, lo, hi) for two methods scored on the same prompts, paired per prompt.

    ``a``: ``(Ra, P, Ka)`` (or ``(P, Ka)``), ``b``: ``(Rb, P, Kb)`` (or ``(P, Kb)``); prompt ``p`` is the same
    prompt in both. Each resample draws one set of prompts for both methods, so a prompt's difficulty cancels in the
    difference (that is the pairing), and draws each method's runs on its own: run ``i`` of one method has nothing to
    do with run ``i`` of another, so runs are not paired. Completions are not paired either (completion ``k`` of
    ``a`` and of ``b`` are unrelated samples); all of a prompt's completions move together."""
    _check(n_boot, alpha)
    xa, xb = _as_cells(a, "a"), _as_cells(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired scores need the same prompts, got {xa.shape[1]} and {xb.shape[1]}")
    (sa, ca), (sb, cb) = _sums_counts(xa), _sums_counts(xb)
    rng = np.random.default_rng(seed)
    w_prompt = resample_weights(xa.shape[1], n_boot, rng)
    wa, wb = resample_weights(xa.shape[0], n_boot, rng), resample_weights(xb.shape[0], n_boot, rng)
    reps = _weighted_mean(sb, cb, wb, w_prompt) - _weighted_mean(sa, ca, wa, w_prompt)
    est = float(sb.sum() / cb.sum() - sa.sum() / ca.sum())
    d = xb[~np.isnan(xb)]
    e = xa[~np.isnan(xa)]
    same_shift = np.all(d == d[0]) and np.all(e == e[0])
    return _interval(est, reps, alpha, est if same_shift else None)


def win_cells(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Win sums and pair counts per (run of b, run of a, prompt), each ``(Rb, Ra, P)``: over every pair of a present
    completion of ``b`` and one of ``a`` for the same prompt, 1 when b's score is higher, ½ on a tie.

    ``a``: ``(Ra, P, Ka)``, ``b``: ``(Rb, P, Kb)``, NaN = missing (such pairs are left out)."""
    da = a[None, :, :, None, :]  # (1, Ra, P, 1, Ka)
    db = b[:, None, :, :, None]  # (Rb, 1, P, Kb, 1)
    present = ~np.isnan(da) & ~np.isnan(db)
    with np.errstate(invalid="ignore"):
        win = np.where(db > da, 1.0, np.where(db == da, 0.5, 0.0))
    return np.where(present, win, 0.0).sum(axis=(3, 4)), present.sum(axis=(3, 4)).astype(np.float64)


def prompt_win_rate(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """(win rate, lo, hi) of ``b`` over ``a`` on the same prompts: the chance that a completion of ``b`` scores higher
    than a completion of ``a`` for the same prompt (ties a half; every pair of their completions of that prompt, over
    every pair of runs, counts), with the percentile-bootstrap interval resampling prompts (one draw for both) and
    each method's runs. ``a``: ``(Ra, P, Ka)`` or ``(P, Ka)``, ``b``: ``(Rb, P, Kb)`` or ``(P, Kb)``. 0.5: no
    preference either way."""
    _check(n_boot, alpha)
    xa, xb = _as_cells(a, "a"), _as_cells(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired scores need the same prompts, got {xa.shape[1]} and {xb.shape[1]}")
    wins, pairs = win_cells(xa, xb)  # (Rb, Ra, P)
    if pairs.sum() == 0:
        raise ValueError("no prompt has a score from both a and b")
    rng = np.random.default_rng(seed)
    w_prompt = resample_weights(xa.shape[1], n_boot, rng)
    wa, wb = resample_weights(xa.shape[0], n_boot, rng), resample_weights(xb.shape[0], n_boot, rng)

    def stat(cells: np.ndarray) -> np.ndarray:  # Σ_ijp wb[·,i] wa[·,j] wp[·,p] cells[i,j,p]
        return np.einsum("bi,bj,bp,ijp->b", wb, wa, w_prompt, cells, optimize=True)

    reps = _ratio(stat(wins), stat(pairs))
    est = float(wins.sum() / pairs.sum())
    rates = _ratio(wins, pairs)
    rates = rates[~np.isnan(rates)]
    return _interval(est, reps, alpha, est if np.all(rates == est) else None)
