"""The run report: one self-contained HTML file for one or more runs — interactive plots (plotly, its script
embedded: the file opens offline and fetches nothing), tables, the samples — that tells a run's story.

:func:`write_report` reads each run directory — ``metrics.jsonl``, ``samples.jsonl``, ``alarms.jsonl``,
``run_info.json``, the saved ``tether_config.yaml`` and evaluation results — and shows: a summary (stage, length,
run time, the best held-out evaluation, last values), the alarms, a config diff when several runs differ, then the
plots (``tether.monitor.report_panels``: one quantity per axis; score per reward source, KL and β, entropy, response
length and EOS fraction, clip fractions, step size, value explained variance and loss, learning rates, timings,
throughput, held-out evaluations, degeneration statistics, the over-optimisation view — proxy reward and each
held-out judge against √KL, Gao et al. 2022 — and the SFT and reward-model stages), evaluation results, samples, the
config and library versions. Several runs overlay their curves (one colour per run). A run directory is a stage's
``output_dir`` (``runs/ppo``) or a pipeline/demo directory holding ``sft/``, ``rm/``, ``ppo/`` and ``eval/``.

``write_report(..., png=PATH)`` also saves the main plots as one PNG (the picture in the README; matplotlib).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tether.errors import DataError
from tether.monitor.alarms import THRESHOLD_FIELDS, judge_keys, replay
from tether.monitor.run_files import library_versions, write_bytes_atomic, write_text_atomic
from tether.monitor.report_panels import OVEROPT_NOTE, OVEROPT_TITLE, PLOT_IDS, has_stage, panel

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


# --------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:15px;line-height:1.45;
margin:2em auto;max-width:1400px;color:#222;padding:0 1.2em}
h1{font-size:1.7em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em}
table{border-collapse:collapse;font-size:14px;margin:.5em 0}th,td{border:1px solid #ddd;padding:.3em .55em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:13px}
.note{color:#555;font-size:14px}.missing{color:#777}.alarm{color:#b00020}
nav a{margin-right:.9em;font-size:14px}
.plot{min-height:200px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num_cell(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"<td>{_e(v)}</td>"
    return f'<td class="num">{v:.4g}</td>' if isinstance(v, float) else f'<td class="num">{v}</td>'


def _section(sid: str, title: str, body: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<section id="{_e(sid)}"{c}><h2>{_e(title)}</h2>\n{body}\n</section>\n'


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def run_times(run: RunData) -> dict[str, float]:
    """Seconds each stage of ``run`` ran: PPO the sum of its per-update rollout, scoring and update times (held-out
    evaluations and checkpoints not counted), SFT and RM their elapsed time at the last logged step."""
    out: dict[str, float] = {}
    stages = {**run.stages, run.stage: run.metrics}
    for stage in ("sft", "rm", "ppo"):
        records = stages.get(stage)
        if not records:
            continue
        if stage == "ppo":
            total = sum(v for r in records for k, v in r.items() if k.startswith("time/") and k.endswith("_s")
                        and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        else:
            vals = [r["time/elapsed_s"] for r in records if isinstance(r.get("time/elapsed_s"), (int, float))]
            total = max(vals) if vals else 0.0
        if total > 0:
            out[stage] = float(total)
    return out


def _config_data(run: RunData) -> dict[str, Any]:
    try:
        data = yaml.safe_load(run.config_text) if run.config_text else None
    except yaml.YAMLError:
        data = None
    return data if isinstance(data, dict) else {}


@dataclass
class Best:
    """The best value of ``metric`` in a run (``max`` or ``min``) and where it was."""

    metric: str
    mode: str
    value: float
    at: int


def best_of(records: Sequence[Mapping[str, Any]], metric: str, mode: str, step_key: str) -> Optional[Best]:
    """The record with the best finite ``metric`` (the first of equals), as ``BestTracker`` picks the ``best/``
    checkpoint."""
    best: Optional[Best] = None
    for i, r in enumerate(records):
        v = r.get(metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if best is None or (v > best.value if mode == "max" else v < best.value):
            at = r.get(step_key)
            best = Best(metric, mode, float(v), int(at) if isinstance(at, (int, float)) else i + 1)
    return best


def best_update(run: RunData) -> Optional[Best]:
    """The run's best held-out evaluation: PPO by ``monitor.best_metric`` (default: the first judge, else
    ``eval/proxy``, as the trainer chooses ``best/``), SFT by the lowest ``eval_loss``, a reward model by the highest
    ``eval_accuracy``."""
    if run.stage == "sft":
        return best_of(run.metrics, "eval_loss", "min", "step")
    if run.stage == "rm":
        return best_of(run.metrics, "eval_accuracy", "max", "step") or best_of(run.metrics, "eval_loss", "min",
                                                                                 "step")
    monitor = _config_data(run).get("monitor")
    monitor = monitor if isinstance(monitor, dict) else {}
    metric = monitor.get("best_metric")
    if not isinstance(metric, str):
        judges = monitor.get("judges") if isinstance(monitor.get("judges"), list) else None
        if judges:
            metric = f"eval/{str(judges[0]).split(':')[-1]}"
        else:
            keys = judge_keys(run.metrics)
            metric = keys[0] if keys else "eval/proxy"
    mode = monitor.get("best_mode") if monitor.get("best_mode") in ("max", "min") else "max"
    return best_of(run.metrics, metric, mode, "update")


def _runs_table(runs: Sequence[RunData]) -> str:
    keys = ["objective/score", "objective/kl", "objective/entropy", "response/length_mean", "policy/clipfrac",
            "loss", "eval_loss", "accuracy"]
    present = [k for k in keys if any(k in r.metrics[-1] for r in runs)]
    head = "".join(f"<th>last {_e(k)}</th>" for k in present)
    rows = []
    for r in runs:
        last = r.metrics[-1]
        n = last.get(r.step_key, len(r.metrics))
        times = run_times(r)
        t = " · ".join(f"{k} {_fmt_duration(v)}" for k, v in times.items()) if times else "n/a"
        b = best_update(r)
        if b is not None:
            which = "highest" if b.mode == "max" else "lowest"
            best = f"{_e(b.metric)} = {b.value:.4g} at {r.step_key} {b.at} ({which})"
        else:
            best = "no held-out evaluation" + (" (monitor.eval_every keeps best/)" if r.stage == "ppo" else "")
        if r.stage == "ppo":
            top = best_of(r.metrics, "objective/score", "max", "update")
            if top is not None:
                best += f"<br><span class=\"note\">highest training score (the proxy): {top.value:.4g} at update " \
                        f"{top.at}</span>"
        cells = "".join(_num_cell(last.get(k, "")) for k in present)
        rows.append(f"<tr><td>{_e(r.name)}</td><td>{_e(r.path)}</td><td>{_e(r.stage)}</td>"
                    f"<td class=\"num\">{_e(n)}</td><td>{_e(t)}</td><td>{best}</td>{cells}</tr>")
    return (f"<table><tr><th>run</th><th>directory</th><th>stage</th><th>{_e('updates / steps')}</th>"
            "<th>run time</th><th>best held-out evaluation</th>" f"{head}</tr>" + "".join(rows) + "</table>"
            "<p class=\"note\">Run time: PPO sums its per-update rollout, scoring and update times (held-out "
            "evaluations and checkpoints not counted); SFT and RM report their elapsed time.</p>")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_diff(runs: Sequence[RunData]) -> list[tuple[str, list[Any]]]:
    """The options whose values differ between the runs' saved configs (nested keys dotted; a run without the
    option shows ``None``), in the order they first appear."""
    flats = [_flatten(_config_data(r)) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    out = []
    for k in keys:
        vals = [f.get(k, missing) for f in flats]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str)
               for v in vals[1:]):
            out.append((k, [None if v is missing else v for v in vals]))
    return out


def _config_diff_html(runs: Sequence[RunData]) -> str:
    without = [r.name for r in runs if not r.config_text]
    diff = config_diff([r for r in runs if r.config_text])
    note = (f"<p class=\"missing\">No saved config for {_e(', '.join(without))}.</p>" if without else "")
    if not diff:
        return note + "<p>The saved configs do not differ.</p>"
    with_cfg = [r for r in runs if r.config_text]
    head = "".join(f"<th>{_e(r.name)}</th>" for r in with_cfg)
    rows = "".join(f"<tr><td>{_e(k)}</td>" + "".join(
        f"<td>{_e(json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)}</td>" for v in vals) + "</tr>"
        for k, vals in diff)
    return (note + f"<p class=\"note\">Only the {len(diff)} options whose values differ.</p>"
            f"<table><tr><th>option</th>{head}</tr>{rows}</table>")


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


def _plots(runs: Sequence[RunData]) -> tuple[list[str], list[str]]:
    """(plot sections, nav links): every plot that applies to these runs, with its figure or a line saying what was
    not logged."""
    from tether.monitor.report_figures import figure, figure_html

    plots, nav = [], []
    for pid in PLOT_IDS:
        if not has_stage(pid, runs):
            continue
        p = None if pid == "overopt" else panel(pid)
        title = OVEROPT_TITLE if p is None else p.title
        note = OVEROPT_NOTE if p is None else p.note
        fig = figure(pid, runs)
        body = (f"<p class=\"note\">{_e(note)}</p>" if note else "") + (
            f'<div class="plot">{figure_html(fig, f"fig-{pid}")}</div>' if fig is not None else
            "<p class=\"missing\">Not logged in " + ("these runs" if len(runs) > 1 else "this run")
            + (" (no held-out judges ran)" if pid == "overopt" else "") + ".</p>")
        plots.append(_section(f"plot-{pid}", title, body, "" if fig is not None else "missing"))
        nav.append(f'<a href="#plot-{_e(pid)}">{_e(pid)}</a>')
    return plots, nav


def build_html(runs: Sequence[RunData], title: Optional[str] = None) -> str:
    """The report page for ``runs`` as one HTML string, plotly.js and every figure's data inline."""
    from tether.monitor.report_figures import plotly_js

    title = title or "tether report — " + ", ".join(r.name for r in runs)
    plots, nav = _plots(runs)
    warn = "".join(f"<p class=\"note\">{_e(r.name)}: skipped a torn last line of metrics.jsonl.</p>"
                   for r in runs if r.skipped_lines)
    sections = [_section("runs", "Runs", _runs_table(runs) + warn)]
    if len(runs) > 1:
        sections.append(_section("config-diff", "Config differences", _config_diff_html(runs)))
    sections += [_section("alarms", "Alarms", _alarms_html(runs)), *plots]
    ev = _eval_html(runs)
    if ev:
        sections.append(_section("eval-results", "Evaluation results", ev))
    sections += [
        _section("samples", "Samples", _samples_html(runs)),
        _section("config", "Config", _config_html(runs)),
        _section("versions", "Versions", _versions_html(runs)),
    ]
    made = time.strftime("%Y-%m-%d %H:%M")
    links = " ".join(['<a href="#runs">runs</a>', *(['<a href="#config-diff">config diff</a>'] if len(runs) > 1
                                                     else []), '<a href="#alarms">alarms</a>', *nav,
                      '<a href="#samples">samples</a>', '<a href="#config">config</a>',
                      '<a href="#versions">versions</a>'])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n<script>{plotly_js()}</script>\n</head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n<p class=\"note\">Made {made}. Self-contained: the plotting script (plotly.js) and "
            "every figure's data are in this file; nothing is fetched. Plots: drag to zoom (double-click resets), "
            "hover for values, click a legend entry to hide it; the slider under a plot sets its smoothing.</p>\n"
            f"<nav>{links}</nav>\n" + "".join(sections) + "</body>\n</html>\n")


def write_report(run_dirs: Sequence[str | Path], out: str | Path, *, title: Optional[str] = None,
                 png: Optional[str | Path] = None) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out`` (atomically); with ``png``, also the main plots as one
    image. Returns ``out``. One-line ``DataError`` for a directory that is not a run; ``ImportError`` naming the
    extra to install when plotly (or, for ``png``, matplotlib) is missing."""
    from tether.monitor.report_figures import require_plotly, summary_png

    if not run_dirs:
        raise DataError("report: give at least one run directory")
    require_plotly()
    if png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError("--png needs matplotlib: pip install 'tether[report]'") from None
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.name}"
    page = build_html(runs, title)
    out = write_text_atomic(Path(out), page)
    if png is not None:
        write_bytes_atomic(Path(png), summary_png(runs))
    return out
