"""What the report plots, as data: panels of one or more rows, each row **one quantity** (one unit, one y axis),
each series the points of one metric of one run. The drawing (``tether.monitor.report_figures``) only lays these out.

A panel is a list of rows sharing the x axis (updates or steps), e.g. "KL to the reference" over "KL coefficient β"
rather than the two on twin axes. The held-out evaluation and the over-optimisation view give each judge its own row,
since judges are on different scales. Smoothing is a centred moving average (:func:`smooth`); the raw points are
always drawn beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from tether.monitor.alarms import judge_keys, update_of

if TYPE_CHECKING:  # pragma: no cover
    from tether.monitor.report import RunData


@dataclass(frozen=True)
class Axis:
    """One quantity: the metric keys drawn on it (``prefix/*`` patterns allowed) and its label with the unit."""

    keys: tuple[str, ...]
    label: str
    per_key: bool = False
    """Give each matched key a row of its own (judges on different scales)."""


@dataclass(frozen=True)
class Panel:
    """One plot of the report: rows of quantities over the same x."""

    id: str
    title: str
    axes: tuple[Axis, ...]
    note: str = ""
    smooth: bool = True


PPO_PANELS: tuple[Panel, ...] = (
    Panel("score", "Score per reward source",
          (Axis(("objective/score", "objective/score/*", "objective/rlhf_reward"), "score"),),
          note="Combined score, each source's raw score, and score − β·KL (what PPO maximises)."),
    Panel("kl", "KL to the reference and KL coefficient",
          (Axis(("objective/kl",), "KL (nats / sequence)"), Axis(("objective/kl_coef",), "KL coefficient β")),
          note="Negative on average means sampling and scoring disagree."),
    Panel("entropy", "Entropy", (Axis(("objective/entropy",), "entropy (nats / sequence)"),
                                 Axis(("entropy_per_token",), "entropy (nats / token)")),
          note="A collapse towards 0 means the policy is locking onto one answer."),
    Panel("length", "Response length", (Axis(("response/length_mean",), "length (tokens)"),
                                        Axis(("response/eos_fraction",), "EOS fraction")),
          note="Length drifting with the score is the classic reward hack."),
    Panel("clipfrac", "Clip fractions", (Axis(("policy/clipfrac", "value/clipfrac"), "fraction clipped"),),
          note="Above ~0.3: steps too large."),
    Panel("approx_kl", "Policy step size", (Axis(("policy/approx_kl",), "approx KL"),
                                            Axis(("policy/ratio_max",), "max ratio")),
          note="approx-KL of each update's new policy to its rollout policy, and the largest probability ratio."),
    Panel("value", "Value explained variance", (Axis(("value/explained_variance",), "explained variance"),
                                                Axis(("value/loss",), "value loss")),
          note="≤ 0 after warm-up: the critic is not learning."),
    Panel("lr", "Learning rates", (Axis(("lr/*", "lr"), "learning rate"),), smooth=False),
    Panel("time", "Timings", (Axis(("time/*",), "seconds per update"),)),
    Panel("throughput", "Throughput", (Axis(("perf/*",), "tokens / s"),)),
    Panel("eval", "Held-out evaluation", (Axis(("eval/*",), "mean score", per_key=True),),
          note="Proxy reward and independent judges on the fixed held-out prompts, one row each (their scales "
               "differ)."),
    Panel("text", "Degeneration statistics", (Axis(("text/repeat_ngram_share", "text/top_token_share",
                                                    "text/distinct_share"), "share of completions / tokens"),),
          note="Repeated n-grams within completions, the most frequent token's share, distinct completions."),
)
STAGE_PANELS: dict[str, Panel] = {
    "sft": Panel("stage-sft", "SFT stage", (Axis(("loss", "eval_loss"), "cross-entropy (nats / token)"),
                                            Axis(("lr",), "learning rate")), smooth=False),
    "rm": Panel("stage-rm", "Reward model stage", (Axis(("loss", "eval_loss"), "Bradley–Terry loss"),
                                                   Axis(("accuracy", "eval_accuracy"), "pair accuracy")),
                smooth=False),
}
OVEROPT_TITLE = "Over-optimisation: proxy reward and held-out judges vs √KL"
OVEROPT_NOTE = ("Gao et al. 2022: a proxy reward that keeps rising while held-out judges peak and fall is being "
                "over-optimised. One row per quantity: the proxy (training score along the run, held-out proxy), then "
                "each judge. Points with bars: eval/results.json (mean and 95% CI per policy); lines with dots: "
                "held-out evaluations during training.")
PLOT_IDS: tuple[str, ...] = (*(p.id for p in PPO_PANELS), "overopt", "stage-sft", "stage-rm")
"""Every plot id; the report's sections are ``plot-<id>``."""
EVAL_SKIP = {"eval/n", "eval/length_mean", "eval/eos_fraction", "eval/kl", "eval/sqrt_kl"}


@dataclass
class Series:
    """The points of one metric of one run on one row."""

    name: str
    """Legend label: the metric, prefixed by the run's name when several runs are overlaid."""
    run: int
    """Index of the run (its colour when several runs are overlaid)."""
    index: int
    """Index of the metric within its row (its colour for one run, its dash for several)."""
    x: list[float]
    y: list[float]
    lo: Optional[list[float]] = None
    hi: Optional[list[float]] = None
    kind: str = "line"
    """``line`` (a curve over x, smoothable), ``points`` (evaluations: markers, joined unless they have error bars),
    ``context`` (the training score along √KL, for context)."""


@dataclass
class Row:
    """One quantity of a panel."""

    label: str
    series: list[Series] = field(default_factory=list)


def smooth(ys: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (odd; shrinking at the ends, so no point is lost or shifted).
    ``window`` ≤ 1 returns the values unchanged."""
    if window <= 1:
        return [float(y) for y in ys]
    half = window // 2
    out = []
    for i in range(len(ys)):
        lo, hi = max(0, i - half), min(len(ys), i + half + 1)
        out.append(float(f"{sum(ys[lo:hi]) / (hi - lo):.12g}"))  # no float noise: a constant stays constant
    return out


def default_window(n: int) -> int:
    """The report's initial smoothing window for ``n`` points: about a tenth of the run, odd, at least 3."""
    w = max(3, n // 10)
    return w if w % 2 else w + 1


def with_derived(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with ``entropy_per_token`` = entropy per sequence / mean response length."""
    out = []
    for r in records:
        d = dict(r)
        ent, length = r.get("objective/entropy"), r.get("response/length_mean")
        if isinstance(ent, (int, float)) and isinstance(length, (int, float)) and length > 0:
            d["entropy_per_token"] = ent / length
        out.append(d)
    return out


def expand(patterns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The numeric keys of ``records`` that ``patterns`` name (``prefix/*``: one level below the prefix)."""
    keys: dict[str, None] = {}
    present: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                present[k] = None
    for pat in patterns:
        if pat.endswith("/*"):
            for k in present:
                if k.startswith(pat[:-1]) and "/" not in k[len(pat) - 1:] and k not in EVAL_SKIP:
                    keys[k] = None
        elif pat in present:
            keys[pat] = None
    return list(keys)


def xy(records: Sequence[Mapping[str, Any]], key: str, step_key: str) -> tuple[list[float], list[float]]:
    """Finite values of ``key`` against the record's ``step_key`` (its position when absent)."""
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        x = r.get(step_key)
        xs.append(float(x) if isinstance(x, (int, float)) else float(update_of(records, i) or i + 1))
        ys.append(float(v))
    return xs, ys


def _same(records: Sequence[Mapping[str, Any]], a: str, b: str) -> bool:
    return all(r.get(a) == r.get(b) for r in records)


def _label(runs: Sequence[RunData], run: int, key: str) -> str:
    return f"{runs[run].name} · {key}" if len(runs) > 1 else key


def _records(panel_id: str, run: RunData) -> list[dict[str, Any]]:
    if panel_id.startswith("stage-"):
        stage = panel_id[6:]
        return list(run.stages.get(stage) or (run.metrics if run.stage == stage else []))
    return with_derived(run.metrics) if run.stage == "ppo" else []


def panel(panel_id: str) -> Panel:
    if panel_id.startswith("stage-"):
        return STAGE_PANELS[panel_id[6:]]
    return next(p for p in PPO_PANELS if p.id == panel_id)


def panel_rows(panel_id: str, runs: Sequence[RunData]) -> list[Row]:
    """The rows of one plot with every run's series; rows no run logged are left out (an empty list: nothing to
    draw)."""
    if panel_id == "overopt":
        return overopt_rows(runs)
    p = panel(panel_id)
    step_key = "step" if panel_id.startswith("stage-") else "update"
    rows: list[Row] = []
    for axis in p.axes:
        per_run = [expand(axis.keys, _records(panel_id, r)) for r in runs]
        if p.id == "score":  # one source: its raw score is the combined score (unless weighted or normalised)
            per_run = [[k for k in ks if not (k.startswith("objective/score/")
                                              and _same(_records(panel_id, r), k, "objective/score"))]
                       for ks, r in zip(per_run, runs)]
        groups: list[tuple[str, list[tuple[int, str]]]]
        if axis.per_key:
            names = list(dict.fromkeys(k for ks in per_run for k in ks))
            groups = [(k, [(i, k) for i, ks in enumerate(per_run) if k in ks]) for k in names]
        else:
            groups = [(axis.label, [(i, k) for i, ks in enumerate(per_run) for k in ks])]
        for label, members in groups:
            row = Row(label)
            for run_i, key in members:
                xs, ys = xy(_records(panel_id, runs[run_i]), key, step_key)
                if xs:
                    index = per_run[run_i].index(key) if not axis.per_key else 0
                    row.series.append(Series(_label(runs, run_i, key), run_i, index, xs, ys))
            if row.series:
                rows.append(row)
    return rows


def has_stage(panel_id: str, runs: Sequence[RunData]) -> bool:
    """Whether a plot applies to these runs at all (stage plots need a stage's metrics; the others a PPO run)."""
    if panel_id.startswith("stage-"):
        return any(panel_id[6:] in r.stages or r.stage == panel_id[6:] for r in runs)
    return any(r.stage == "ppo" for r in runs)


# ------------------------------------------------------------------------------------------------ over-optimisation


def overopt_points(run: RunData) -> dict[str, list[tuple[float, float, Optional[float], Optional[float]]]]:
    """Series of the over-optimisation view: name → [(√KL, value, lo, hi)], from in-training held-out evaluations
    (``eval/*`` with ``eval/kl`` or the update's ``objective/kl``) and from ``eval/results.json`` (one point per
    compared policy)."""
    out: dict[str, list[tuple[float, float, Optional[float], Optional[float]]]] = {}
    judges = judge_keys(run.metrics)
    if judges:
        for r in run.metrics:
            kl = r.get("eval/kl", r.get("objective/kl"))
            if not isinstance(kl, (int, float)):
                continue
            x = math.sqrt(max(float(kl), 0.0))
            for key in ("eval/proxy", *judges):
                v = r.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    name = "proxy (held-out)" if key == "eval/proxy" else key[5:]
                    out.setdefault(name, []).append((x, float(v), None, None))
    res = run.eval_results
    if isinstance(res, dict) and isinstance(res.get("policies"), dict):
        metrics = [m for m in res.get("metrics", []) if m not in ("kl", "ref_ppl", "tokens")]
        pts = []
        for pol, summ in res["policies"].items():
            kl = (summ.get("kl") or {}).get("mean")
            if isinstance(kl, (int, float)):
                pts.append((math.sqrt(max(kl, 0.0)), pol, summ))
        pts.sort(key=lambda t: t[0])
        if len(pts) >= 2 or (pts and judges):
            for m in metrics:
                series = []
                for x, _, summ in pts:
                    s = summ.get(m) or {}
                    if isinstance(s.get("mean"), (int, float)):
                        series.append((x, float(s["mean"]), s.get("lo"), s.get("hi")))
                if series:
                    name = "proxy: reward model (eval)" if m == "rm" else f"{m} (eval)"
                    out.setdefault(name, []).extend(series)
    return out


def overopt_rows(runs: Sequence[RunData]) -> list[Row]:
    """Proxy row (the training score along √KL for context, the held-out proxy), then one row per judge; empty when
    no run has a judge."""
    proxy = Row("proxy reward")
    judges: dict[str, Row] = {}
    any_judge = False
    for r_i, run in enumerate(runs):
        series = overopt_points(run)
        if not any(not n.startswith("proxy") for n in series):
            continue
        any_judge = True
        pre = f"{run.name} · " if len(runs) > 1 else ""
        xs, ys = [], []
        for rec in run.metrics:
            kl, sc = rec.get("objective/kl"), rec.get("objective/score")
            if isinstance(kl, (int, float)) and isinstance(sc, (int, float)) and math.isfinite(sc):
                xs.append(math.sqrt(max(kl, 0.0)))
                ys.append(float(sc))
        if xs:
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            proxy.series.append(Series(f"{pre}proxy: training score", r_i, 0, [xs[i] for i in order],
                                       [ys[i] for i in order], kind="context"))
        for s_i, (name, pts) in enumerate(series.items()):  # judges in the order the run logged them
            row = proxy if name.startswith("proxy") else judges.setdefault(
                name.removesuffix(" (eval)"), Row(f"{name.removesuffix(' (eval)')} score"))
            bars = all(p[2] is not None and p[3] is not None for p in pts)
            row.series.append(Series(f"{pre}{name}", r_i, s_i, [p[0] for p in pts], [p[1] for p in pts],
                                     [p[2] for p in pts] if bars else None,  # type: ignore[misc]
                                     [p[3] for p in pts] if bars else None,  # type: ignore[misc]
                                     kind="points"))
    if not any_judge:
        return []
    return [r for r in (proxy, *judges.values()) if r.series]
