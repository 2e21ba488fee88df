"""The run report: one self-contained HTML file (plots embedded as PNG, no scripts, no network) for one or more runs.

:func:`write_report` reads each run directory — ``metrics.jsonl``, ``samples.jsonl``, ``alarms.jsonl``,
``run_info.json``, the saved ``tether_config.yaml`` and evaluation results — and draws with matplotlib: score per
reward source, KL and the KL coefficient, entropy, response length, clip fractions, step size, value explained
variance, learning rates, timings, throughput, held-out evaluations, degeneration statistics, and the
over-optimisation view (proxy reward and each held-out judge against √KL, Gao et al. 2022) when judges ran; then the
alarms, the sample table, the config and the library versions. Several runs overlay their curves (one colour per
run). A run directory is a stage's ``output_dir`` (``runs/ppo``) or a pipeline/demo directory holding ``sft/``,
``rm/``, ``ppo/`` and ``eval/``.

``write_report(..., png=PATH)`` also saves the main plots as one PNG (the picture in the README).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tether.errors import DataError
from tether.monitor.alarms import THRESHOLD_FIELDS, judge_keys, replay, update_of

# --------------------------------------------------------------------------------------------------- reading runs


@dataclass
class RunData:
    """Everything the report shows about one run."""

    name: str
    path: Path
    main_dir: Path
    stage: str
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    alarms_source: str = ""
    config_text: str = ""
    config_source: str = ""
    info: Optional[dict[str, Any]] = None
    eval_results: Optional[dict[str, Any]] = None
    eval_source: str = ""
    stages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped_lines: int = 0

    @property
    def step_key(self) -> str:
        return "update" if self.stage == "ppo" else "step"


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is skipped and counted, any other bad
    line is a one-line ``DataError`` naming the file and line."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    skipped = 0
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):
                skipped += 1
                continue
            raise DataError(f"{path}:{i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object per line")
        rows.append(row)
    return rows, skipped


def _stage_of(records: Sequence[Mapping[str, Any]]) -> str:
    keys = set().union(*(r.keys() for r in records)) if records else set()
    if "update" in keys or any(k.startswith("objective/") for k in keys):
        return "ppo"
    if "accuracy" in keys or "eval_accuracy" in keys:
        return "rm"
    return "sft"


def load_run(path: str | Path) -> RunData:
    """Read one run directory (see the module docstring); one-line ``DataError`` when it holds no metrics."""
    p = Path(path)
    if p.is_file() and p.name == "metrics.jsonl":
        p = p.parent
    if not p.is_dir():
        raise DataError(f"{p}: run directory not found")
    if (p / "ppo" / "metrics.jsonl").is_file():
        main = p / "ppo"
    elif (p / "metrics.jsonl").is_file():
        main = p
    else:
        raise DataError(f"{p}: no metrics.jsonl (nor ppo/metrics.jsonl): not a tether run directory")
    metrics, skipped = read_jsonl(main / "metrics.jsonl")
    if not metrics:
        raise DataError(f"{main / 'metrics.jsonl'}: no records yet")
    run = RunData(name=p.name or str(p), path=p, main_dir=main, stage=_stage_of(metrics), metrics=metrics,
                  skipped_lines=skipped)
    if (main / "samples.jsonl").is_file():
        run.samples = read_jsonl(main / "samples.jsonl")[0]
        _text_stats_from_samples(run)
    if (main / "run_info.json").is_file():
        try:
            run.info = json.loads((main / "run_info.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            run.info = None
    for cand in (main / "tether_config.yaml", main / "final" / "tether_config.yaml"):
        if cand.is_file():
            run.config_text, run.config_source = cand.read_text(encoding="utf-8"), str(cand)
            break
    else:
        if run.info and run.info.get("config"):
            run.config_text = yaml.safe_dump(run.info["config"], sort_keys=False, allow_unicode=True)
            run.config_source = str(main / "run_info.json")
    if main != p:
        for stage in ("sft", "rm"):
            f = p / stage / "metrics.jsonl"
            if f.is_file():
                run.stages[stage] = read_jsonl(f)[0]
    for cand in (p / "eval" / "results.json", main.parent / "eval" / "results.json" if main.name == "ppo" else None):
        if cand is not None and cand.is_file():
            try:
                run.eval_results, run.eval_source = json.loads(cand.read_text(encoding="utf-8")), str(cand)
            except json.JSONDecodeError:
                pass
            break
    _load_alarms(run)
    return run


def _text_stats_from_samples(run: RunData) -> None:
    """A run logged without the monitor has no ``text/*`` metrics: compute them from its sample tables."""
    if run.stage != "ppo" or any(k.startswith("text/") for r in run.metrics for k in r):
        return
    from tether.monitor.alarms import text_stats

    comps: dict[int, list[str]] = {}
    for s in run.samples:
        if isinstance(s.get("update"), int):
            comps.setdefault(s["update"], []).append(str(s.get("completion", "")))
    for i, r in enumerate(run.metrics):
        u = r.get("update")
        if u in comps:
            run.metrics[i] = {**r, **text_stats(comps[u])}


def _load_alarms(run: RunData) -> None:
    f = run.main_dir / "alarms.jsonl"
    if f.is_file():
        run.alarms, run.alarms_source = read_jsonl(f)[0], "logged live (alarms.jsonl)"
        return
    if run.stage != "ppo":
        return
    from tether.config.monitor import AlarmConfig

    cfg, warmup = AlarmConfig(), 0
    try:
        data = yaml.safe_load(run.config_text) if run.config_text else None
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        warmup = int(data.get("critic_warmup_updates") or 0)
        alarm_data = (data.get("monitor") or {}).get("alarms") if isinstance(data.get("monitor"), dict) else None
        if isinstance(alarm_data, dict):
            try:
                cfg = AlarmConfig.model_validate(alarm_data)
            except ValueError:
                pass
    comps: dict[int, list[str]] = {}
    for s in run.samples:
        if isinstance(s.get("update"), int):
            comps.setdefault(s["update"], []).append(str(s.get("completion", "")))
    fired = replay(run.metrics, cfg, warmup, comps)
    run.alarms = [a.as_dict() for a in fired]
    run.alarms_source = "replayed from metrics.jsonl and samples.jsonl with the default thresholds"


# --------------------------------------------------------------------------------------------------- plotting


@dataclass(frozen=True)
class Panel:
    """One plot: series on the left axis (keys, ``prefix/*`` patterns), optionally others on a right axis."""

    id: str
    title: str
    left: tuple[str, ...]
    right: tuple[str, ...] = ()
    ylabel: str = ""
    rlabel: str = ""
    note: str = ""
    smooth: bool = True


PPO_PANELS: tuple[Panel, ...] = (
    Panel("score", "Score per reward source", ("objective/score", "objective/score/*", "objective/rlhf_reward"),
          ylabel="score", note="Combined score, each source's raw score, and score − β·KL (what PPO maximises)."),
    Panel("kl", "KL to the reference and KL coefficient", ("objective/kl",), ("objective/kl_coef",),
          ylabel="nats / sequence", rlabel="β", note="Negative on average means sampling and scoring disagree."),
    Panel("entropy", "Entropy", ("objective/entropy",), ("entropy_per_token",), ylabel="nats / sequence",
          rlabel="nats / token", note="A collapse towards 0 means the policy is locking onto one answer."),
    Panel("length", "Response length", ("response/length_mean",), ("response/eos_fraction",), ylabel="tokens",
          rlabel="EOS fraction", note="Length drifting with the score is the classic reward hack."),
    Panel("clipfrac", "Clip fractions", ("policy/clipfrac", "value/clipfrac"), ylabel="fraction",
          note="Above ~0.3: steps too large."),
    Panel("approx_kl", "Policy step size", ("policy/approx_kl",), ("policy/ratio_max",), ylabel="approx KL",
          rlabel="max ratio", note="approx-KL of each update's new policy to its rollout policy."),
    Panel("value", "Value explained variance", ("value/explained_variance",), ("value/loss",),
          ylabel="explained variance", rlabel="value loss", note="≤ 0 after warm-up: the critic is not learning."),
    Panel("lr", "Learning rates", ("lr/*", "lr"), ylabel="learning rate", smooth=False),
    Panel("time", "Timings", ("time/*",), ylabel="seconds per update"),
    Panel("throughput", "Throughput", ("perf/*",), ylabel="tokens / s"),
    Panel("eval", "Held-out evaluation", ("eval/*",), ylabel="mean score",
          note="Proxy reward and independent judges on the fixed held-out prompts."),
    Panel("text", "Degeneration statistics", ("text/repeat_ngram_share", "text/top_token_share",
                                               "text/distinct_share"), ylabel="share",
          note="Repeated n-grams within completions, the most frequent token's share, distinct completions."),
)
STAGE_PANELS: dict[str, Panel] = {
    "sft": Panel("stage-sft", "SFT", ("loss", "eval_loss"), ("lr",), ylabel="cross-entropy", rlabel="lr",
                 smooth=False),
    "rm": Panel("stage-rm", "Reward model", ("loss", "eval_loss"), ("accuracy", "eval_accuracy"), ylabel="loss",
                rlabel="pair accuracy", smooth=False),
}
GRID = ("score", "kl", "overopt", "entropy", "length", "clipfrac")

_STYLES = ("-", "--", ":", "-.")
_EVAL_SKIP = {"eval/n", "eval/length_mean", "eval/eos_fraction", "eval/kl", "eval/sqrt_kl"}


def _matplotlib():
    try:  # Figure objects draw off-screen on their own: no pyplot, no backend switch in the caller's process
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the report needs matplotlib: pip install 'tether[report]'") from None
    return Figure


def _with_derived(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        d = dict(r)
        ent, length = r.get("objective/entropy"), r.get("response/length_mean")
        if isinstance(ent, (int, float)) and isinstance(length, (int, float)) and length > 0:
            d["entropy_per_token"] = ent / length
        out.append(d)
    return out


def _expand(patterns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    present: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                present[k] = None
    for pat in patterns:
        if pat.endswith("/*"):
            for k in present:
                if k.startswith(pat[:-1]) and "/" not in k[len(pat) - 1 :] and k not in _EVAL_SKIP:
                    keys[k] = None
        elif pat in present:
            keys[pat] = None
    return list(keys)


def _same(records: Sequence[Mapping[str, Any]], a: str, b: str) -> bool:
    return all(r.get(a) == r.get(b) for r in records)


def _xy(records: Sequence[Mapping[str, Any]], key: str, step_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        x = r.get(step_key)
        xs.append(float(x) if isinstance(x, (int, float)) else float(update_of(records, i) or i + 1))
        ys.append(float(v))
    return xs, ys


def _smooth(ys: Sequence[float]) -> list[float]:
    w = max(3, len(ys) // 10)
    out = []
    for i in range(len(ys)):
        lo, hi = max(0, i - w // 2), min(len(ys), i + w // 2 + 1)
        out.append(sum(ys[lo:hi]) / (hi - lo))
    return out


def _colors() -> list[str]:
    return ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def _draw_lines(ax, runs: Sequence[tuple[str, list[dict[str, Any]], str]], keys_per_run: Sequence[list[str]],
                color_by_run: bool, offset: int = 0, smooth: bool = True) -> int:
    colors = _colors()
    drawn = 0
    for r_i, (name, records, step_key) in enumerate(runs):
        for k_i, key in enumerate(keys_per_run[r_i]):
            xs, ys = _xy(records, key, step_key)
            if not xs:
                continue
            c = colors[(r_i if color_by_run else k_i + offset) % len(colors)]
            style = _STYLES[(k_i + offset) % len(_STYLES)] if color_by_run else ("--" if offset else "-")
            label = f"{name} · {key}" if len(runs) > 1 else key
            if len(ys) >= 10 and smooth:
                ax.plot(xs, ys, color=c, alpha=0.25, linewidth=0.8, linestyle=style)
                ax.plot(xs, _smooth(ys), color=c, linewidth=1.6, linestyle=style, label=label)
            else:
                ax.plot(xs, ys, color=c, linewidth=1.6, linestyle=style, marker="o" if len(ys) < 10 else None,
                        markersize=3, label=label)
            drawn += 1
    return drawn


def _panel_axes(ax, panel: Panel, runs: Sequence[RunData], records_of, step_key: Optional[str] = None) -> bool:
    """Draw ``panel`` into ``ax``; False when no run logged any of its series."""
    triples = [(r.name, records_of(r), step_key or r.step_key) for r in runs]
    left = [_expand(panel.left, t[1]) for t in triples]
    if panel.id == "score":  # one source: its raw score is the combined score (unless weighted or normalised)
        left = [[k for k in ks if not (k.startswith("objective/score/") and _same(t[1], k, "objective/score"))]
                for ks, t in zip(left, triples)]
    right = [_expand(panel.right, t[1]) for t in triples]
    if panel.id == "eval":
        left = [[k for k in ks if k not in _EVAL_SKIP] for ks in left]
    if not any(left) and not any(right):
        return False
    many = len(runs) > 1
    n = _draw_lines(ax, triples, left, many, smooth=panel.smooth)
    handles, labels = ax.get_legend_handles_labels()
    if any(right):
        ax2 = ax.twinx()
        n += _draw_lines(ax2, triples, right, many, offset=max(1, max(len(k) for k in left) if left else 1),
                         smooth=panel.smooth)
        ax2.set_ylabel(panel.rlabel or ", ".join(sorted({k for ks in right for k in ks})), fontsize=8)
        ax2.tick_params(labelsize=7)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(triples[0][2] if triples else "update", fontsize=8)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles, labels, fontsize=6, loc="best", framealpha=0.7)
    return n > 0


def _overopt_points(run: RunData) -> dict[str, list[tuple[float, float, Optional[float], Optional[float]]]]:
    """Series for the over-optimisation view: name → [(√KL, value, lo, hi)], from in-training held-out evaluations
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


def _is_proxy(name: str) -> bool:
    return name.startswith("proxy")


def _overopt_axes(ax, runs: Sequence[RunData]) -> bool:
    colors = _colors()
    drawn = False
    ax2 = None
    any_judge = False
    for r_i, run in enumerate(runs):
        series = _overopt_points(run)
        if not any(not _is_proxy(n) for n in series):
            continue
        any_judge = True
        # training proxy along the run, for context: objective/score vs √objective/kl
        xs, ys = [], []
        for rec in run.metrics:
            kl, sc = rec.get("objective/kl"), rec.get("objective/score")
            if isinstance(kl, (int, float)) and isinstance(sc, (int, float)):
                xs.append(math.sqrt(max(kl, 0.0)))
                ys.append(sc)
        pre = f"{run.name} · " if len(runs) > 1 else ""
        if xs:
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            ax.plot([xs[i] for i in order], _smooth([ys[i] for i in order]) if len(xs) >= 10 else
                    [ys[i] for i in order], color="#7f7f7f", alpha=0.6, linewidth=1.2,
                    linestyle=_STYLES[r_i % len(_STYLES)], label=f"{pre}proxy: training score")
        for s_i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: (not _is_proxy(kv[0]), kv[0]))):
            target = ax if _is_proxy(name) else (ax2 := ax2 or ax.twinx())
            c = colors[(s_i + 3 * r_i) % len(colors)]
            xs2 = [p[0] for p in pts]
            ys2 = [p[1] for p in pts]
            yerr = None
            if all(p[2] is not None and p[3] is not None for p in pts):
                yerr = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            target.errorbar(xs2, ys2, yerr=yerr, color=c, marker="o", markersize=4, linewidth=1.5, capsize=3,
                            linestyle=_STYLES[r_i % len(_STYLES)], label=f"{pre}{name}")
            drawn = True
    if not any_judge:
        return False
    ax.set_title("Over-optimisation: proxy and held-out judges vs √KL", fontsize=10)
    ax.set_xlabel("√KL (KL in nats per sequence)", fontsize=8)
    ax.set_ylabel("proxy reward", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("judge score", fontsize=8)
        ax2.tick_params(labelsize=7)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=6, loc="best", framealpha=0.7)
    return drawn


def _png(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def render_panel(panel_id: str, runs: Sequence[RunData], dpi: int = 80) -> Optional[bytes]:
    """PNG bytes of one panel (``score``, ``kl``, … , ``overopt``, ``stage-sft``, ``stage-rm``), or None when no run
    logged its series."""
    Figure = _matplotlib()
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    if not _draw_into(ax, panel_id, runs):
        return None
    return _png(fig, dpi)


def _draw_into(ax, panel_id: str, runs: Sequence[RunData]) -> bool:
    if panel_id == "overopt":
        return _overopt_axes(ax, runs)
    if panel_id.startswith("stage-"):
        stage = panel_id[6:]
        with_stage = [r for r in runs if stage in r.stages or r.stage == stage]
        if not with_stage:
            return False
        return _panel_axes(ax, STAGE_PANELS[stage], with_stage,
                           lambda r: r.stages.get(stage) or (r.metrics if r.stage == stage else []), "step")
    panel = next(p for p in PPO_PANELS if p.id == panel_id)
    ppo_runs = [r for r in runs if r.stage == "ppo"]
    if not ppo_runs:
        return False
    return _panel_axes(ax, panel, ppo_runs, lambda r: _with_derived(r.metrics))


def _flat_zero(panel_id: str, runs: Sequence[RunData]) -> bool:
    panel = next((p for p in PPO_PANELS if p.id == panel_id), None)
    if panel is None:
        return False
    values = [v for r in runs for k in _expand(panel.left, r.metrics) for v in _xy(r.metrics, k, r.step_key)[1]]
    return bool(values) and all(v == 0 for v in values)


def summary_figure(runs: Sequence[RunData], panels: Sequence[str] = GRID):
    """The main plots as one matplotlib figure (2 × 3 grid), for the README picture."""
    Figure = _matplotlib()
    fig = Figure(figsize=(15, 7.6), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    used = 0
    for pid in [*panels, "text", "eval", "lr", "time", "approx_kl", "value"]:
        if used == len(axes):
            break
        if _flat_zero(pid, runs):  # e.g. clip fractions of a one-epoch run: nothing to see in a summary
            continue
        if _draw_into(axes[used], pid, runs):
            used += 1
        else:
            axes[used].clear()
    for ax in axes[used:]:
        ax.set_visible(False)
    title = ", ".join(r.name for r in runs)
    fig.suptitle(f"tether report — {title}", fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
.note{color:#666;font-size:.9em}.missing{color:#888}.alarm{color:#b00020}
nav a{margin-right:.8em;font-size:.9em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:0 2em}.grid h2{font-size:1.05em}
@media(max-width:900px){.grid{grid-template-columns:1fr}}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num_cell(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"<td>{_e(v)}</td>"
    return f'<td class="num">{v:.4g}</td>' if isinstance(v, float) else f'<td class="num">{v}</td>'


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _section(sid: str, title: str, body: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<section id="{_e(sid)}"{c}><h2>{_e(title)}</h2>\n{body}\n</section>\n'


def _runs_table(runs: Sequence[RunData]) -> str:
    keys = ["objective/score", "objective/kl", "objective/entropy", "response/length_mean", "policy/clipfrac",
            "loss", "eval_loss", "accuracy"]
    present = [k for k in keys if any(k in r.metrics[-1] for r in runs)]
    head = "".join(f"<th>last {_e(k)}</th>" for k in present)
    rows = []
    for r in runs:
        last = r.metrics[-1]
        n = last.get(r.step_key, len(r.metrics))
        cells = "".join(_num_cell(last.get(k, "")) for k in present)
        rows.append(f"<tr><td>{_e(r.name)}</td><td>{_e(r.path)}</td><td>{_e(r.stage)}</td>"
                    f"<td class=\"num\">{_e(n)}</td>{cells}</tr>")
    return (f"<table><tr><th>run</th><th>directory</th><th>stage</th><th>{_e('updates / steps')}</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _alarms_html(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        if r.stage != "ppo" and not r.alarms:
            continue
        pre = f"<h3>{_e(r.name)}</h3>" if len(runs) > 1 else ""
        if not r.alarms:
            parts.append(f"{pre}<p>No alarm fired ({_e(r.alarms_source or 'no alarms logged')}).</p>")
            continue
        groups: dict[tuple[str, str], list[dict]] = {}
        for a in r.alarms:
            groups.setdefault((a.get("name", "?"), a.get("metric", "?")), []).append(a)
        rows = []
        for (name, metric), items in groups.items():
            ups = [a.get("update") for a in items if a.get("update") is not None]
            last = items[-1]
            rows.append(f"<tr class=\"alarm\"><td>{_e(name)}</td><td>{_e(metric)}</td>"
                        f"<td>{_e(min(ups) if ups else '')}–{_e(max(ups) if ups else '')}</td>"
                        f"<td class=\"num\">{len(items)}</td>{_num_cell(last.get('value'))}"
                        f"{_num_cell(last.get('threshold'))}<td>{_e(THRESHOLD_FIELDS.get(name, ''))}</td>"
                        f"<td>{_e(last.get('detail', ''))}</td><td>{_e(last.get('remedy', ''))}</td></tr>")
        parts.append(f"{pre}<p class=\"note\">{_e(r.alarms_source)}</p><table><tr><th>alarm</th><th>metric</th>"
                     "<th>updates</th><th>times</th><th>last value</th><th>threshold</th><th>threshold field</th>"
                     "<th>detail</th><th>usual remedy</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts) or "<p>No PPO run: no alarms.</p>"


def _samples_html(runs: Sequence[RunData], max_rows: int = 40) -> str:
    parts = []
    for r in runs:
        pre = f"<h3>{_e(r.name)}</h3>" if len(runs) > 1 else ""
        if not r.samples:
            parts.append(f"{pre}<p class=\"missing\">No samples.jsonl.</p>")
            continue
        ups = sorted({s.get("update") for s in r.samples if isinstance(s.get("update"), int)})
        show = set(ups[:1] + ups[-3:]) if ups else set()
        rows = [s for s in r.samples if s.get("update") in show][:max_rows] if show else r.samples[:max_rows]
        cols = [k for k in rows[0] if k not in ("update", "prompt", "completion")]
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><td class=\"num\">{_e(s.get('update', ''))}</td><td>{_e(s.get('prompt', ''))}</td>"
            f"<td>{_e(s.get('completion', ''))}</td>" + "".join(_num_cell(s.get(c, '')) for c in cols) + "</tr>"
            for s in rows)
        note = (f"<p class=\"note\">Showing updates {', '.join(str(u) for u in sorted(show))} ({len(ups)} updates "
                "were sampled).</p>")
        parts.append(f"{pre}{note}<table><tr><th>update</th><th>prompt</th><th>completion</th>{head}</tr>{body}"
                     "</table>")
    return "".join(parts)


def _eval_html(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        res = r.eval_results
        if not isinstance(res, dict) or not isinstance(res.get("policies"), dict):
            continue
        pre = f"<h3>{_e(r.name)}</h3>" if len(runs) > 1 else ""
        names = list(res["policies"])
        paired = res.get("paired") or {}

        def cell(s: Any) -> str:
            if not isinstance(s, dict) or s.get("mean") is None:
                return "<td>n/a</td>"
            star = " *" if s.get("excludes_0") else ""
            return f'<td class="num">{s["mean"]:.3f} [{s["lo"]:.3f}, {s["hi"]:.3f}]{star}</td>'

        head = "".join(f"<th>{_e(n)}</th>" for n in names) + "".join(
            f"<th>{_e(n)} − {_e(res.get('baseline', ''))}</th>" for n in paired)
        rows = "".join(
            f"<tr><td>{_e(m)}</td>" + "".join(cell(res["policies"][n].get(m)) for n in names)
            + "".join(cell(paired[n].get(m)) for n in paired) + "</tr>" for m in res.get("metrics", []))
        parts.append(f"{pre}<p class=\"note\">From {_e(r.eval_source)}: mean [95% bootstrap CI]; * = the paired "
                     f"difference's CI excludes 0.</p><table><tr><th>metric</th>{head}</tr>{rows}</table>")
    return "".join(parts)


def _config_html(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        pre = f"<h3>{_e(r.name)}</h3>" if len(runs) > 1 else ""
        if r.config_text:
            parts.append(f"{pre}<p class=\"note\">{_e(r.config_source)}</p><pre>{_e(r.config_text)}</pre>")
        else:
            parts.append(f"{pre}<p class=\"missing\">No saved config (tether_config.yaml is written with the final "
                         "model; run_info.json when the run starts).</p>")
    return "".join(parts)


def _versions_html(runs: Sequence[RunData]) -> str:
    from tether.monitor.logger import library_versions

    parts = []
    for r in runs:
        v = (r.info or {}).get("versions")
        pre = f"<h3>{_e(r.name)}</h3>" if len(runs) > 1 else ""
        if isinstance(v, dict):
            started = (r.info or {}).get("started", "")
            parts.append(f"{pre}<p class=\"note\">Recorded when the run started ({_e(started)}).</p><table>"
                         + "".join(f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in v.items())
                         + "</table>")
        else:
            parts.append(f"{pre}<p class=\"missing\">The run recorded no versions (no run_info.json).</p>")
    now = library_versions()
    parts.append("<p class=\"note\">This report was made with:</p><table>"
                 + "".join(f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in now.items()) + "</table>")
    return "".join(parts)


#: The section ids every report has (plots are ``plot-<panel id>``); a plot with no data says so in its section.
PLOT_IDS: tuple[str, ...] = (*(p.id for p in PPO_PANELS), "overopt", "stage-sft", "stage-rm")


def build_html(runs: Sequence[RunData], title: Optional[str] = None, dpi: int = 80) -> str:
    """The report page for ``runs`` as one HTML string (plots inline as base64 PNG)."""
    title = title or "tether report — " + ", ".join(r.name for r in runs)
    plots = []
    nav = []
    for pid in PLOT_IDS:
        if pid.startswith("stage-") and not any(pid[6:] in r.stages or r.stage == pid[6:] for r in runs):
            continue
        if not pid.startswith("stage-") and not any(r.stage == "ppo" for r in runs):
            continue
        panel = next((p for p in PPO_PANELS if p.id == pid), None)
        ptitle = ("Over-optimisation: proxy reward and held-out judges vs √KL" if pid == "overopt"
                  else STAGE_PANELS[pid[6:]].title + " stage" if pid.startswith("stage-") else panel.title)
        data = render_panel(pid, runs, dpi)
        note = panel.note if panel else (
            "Gao et al. 2022: a proxy reward that keeps rising while held-out judges peak and fall is being "
            "over-optimised. Points with bars: eval/results.json (mean and 95% CI per policy); lines: held-out "
            "evaluations during training." if pid == "overopt" else "")
        body = (f"<p class=\"note\">{_e(note)}</p>" if note else "") + (
            _img(data, ptitle) if data is not None else
            "<p class=\"missing\">Not logged in " + ("these runs" if len(runs) > 1 else "this run")
            + (" (no held-out judges ran)" if pid == "overopt" else "") + ".</p>")
        plots.append(_section(f"plot-{pid}", ptitle, body, "" if data is not None else "missing"))
        nav.append(f'<a href="#plot-{_e(pid)}">{_e(pid)}</a>')
    extra_runs = [r for r in runs if r.skipped_lines]
    warn = "".join(f"<p class=\"note\">{_e(r.name)}: skipped a torn last line of metrics.jsonl.</p>"
                   for r in extra_runs)
    sections = [
        _section("runs", "Runs", _runs_table(runs) + warn),
        _section("alarms", "Alarms", _alarms_html(runs)),
        '<div class="grid">\n' + "".join(plots) + "</div>\n",
    ]
    ev = _eval_html(runs)
    if ev:
        sections.append(_section("eval-results", "Evaluation results", ev))
    sections += [
        _section("samples", "Samples", _samples_html(runs)),
        _section("config", "Config", _config_html(runs)),
        _section("versions", "Versions", _versions_html(runs)),
    ]
    made = time.strftime("%Y-%m-%d %H:%M")
    links = " ".join(['<a href="#alarms">alarms</a>', *nav, '<a href="#samples">samples</a>',
                      '<a href="#config">config</a>', '<a href="#versions">versions</a>'])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n"
            f"<p class=\"note\">Made {made}. Self-contained: plots are embedded, nothing is fetched.</p>\n"
            f"<nav>{links}</nav>\n" + "".join(sections) + "</body>\n</html>\n")


def write_report(run_dirs: Sequence[str | Path], out: str | Path, *, title: Optional[str] = None,
                 png: Optional[str | Path] = None, dpi: int = 80) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out`` (atomically); with ``png``, also the main plots as one
    image. Returns ``out``. One-line ``DataError`` for a directory that is not a run; ``ImportError`` naming the
    extra to install when matplotlib is missing."""
    from tether.monitor.logger import write_bytes_atomic, write_text_atomic

    if not run_dirs:
        raise DataError("report: give at least one run directory")
    _matplotlib()
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.name}"
    page = build_html(runs, title, dpi)
    out = write_text_atomic(Path(out), page)
    if png is not None:
        fig = summary_figure(runs)
        data = _png(fig, dpi=72)
        write_bytes_atomic(Path(png), data)
    return out

