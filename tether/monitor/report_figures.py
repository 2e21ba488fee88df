"""Drawing the report's panels (``tether.monitor.report_panels``): interactive plotly figures for the HTML page,
and one matplotlib image for ``--png`` (the README's picture).

Each figure stacks its rows (one quantity, one y axis each) over a shared x axis: zoom and pan move all rows together,
hovering shows every series at that x, clicking a legend entry hides it. Curves with ten points or more are drawn
twice: the raw values, thin and pale, and a centred moving average over them, thick; the slider under the plot sets
the window ("off" shows the raw values alone in both) and the legend says "smoothed". Text is 13 px (about 10 pt) or
larger.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, Optional

from tether.monitor.report_panels import (
    OVEROPT_TITLE,
    Row,
    Series,
    default_window,
    panel,
    panel_rows,
    smooth,
)

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
DASHES = ("solid", "dash", "dot", "dashdot")
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif", "size": 13, "color": "#222"}
WINDOWS = (1, 3, 5, 9, 15, 25, 51, 101, 201)
"""Smoothing windows the slider offers (those shorter than the longest series)."""
MIN_SMOOTH = 10
"""Series with fewer points are drawn as they are (with markers), never smoothed."""
CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False,
          "toImageButtonOptions": {"format": "svg"}, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
"""plotly's options for every figure: the camera button saves an SVG (vector, offline)."""


def _plotly():
    try:
        import plotly.io as pio
        from plotly.subplots import make_subplots
    except ImportError:
        raise ImportError("the report needs plotly: pip install 'tether[report]'") from None
    return pio, make_subplots


@functools.lru_cache(maxsize=None)
def _grid(n: int) -> str:
    """plotly's layout of ``n`` rows over one shared x axis (JSON; made once per n: building figures through
    plotly's validating classes costs ~0.2 s each, the figures themselves are plain dicts)."""
    _, make_subplots = _plotly()
    layout = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=min(0.09, 0.35 / n)).to_plotly_json()
    layout = layout["layout"]
    layout.pop("template", None)
    return json.dumps(layout)


def require_plotly() -> None:
    """Raise the one-line ``ImportError`` naming the extra when plotly is missing."""
    _plotly()


def plotly_js() -> str:
    """plotly.js, minified, to embed once in the page (so it opens offline)."""
    _plotly()
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _style(s: Series, many: bool) -> tuple[str, str]:
    color = COLORS[(s.run if many else s.index) % len(COLORS)]
    dash = DASHES[s.index % len(DASHES)] if many else "solid"
    return color, dash


def _window_label(w: int) -> str:
    return "off" if w <= 1 else str(w)


def _scatter(s: Series, row: int, **kw: Any) -> dict[str, Any]:
    axis = "" if row == 1 else str(row)
    return {"type": "scatter", "x": s.x, "xaxis": f"x{axis}", "yaxis": f"y{axis}", "legendgroup": s.name,
            "hovertemplate": "%{y:.4g}", **kw}


def figure(panel_id: str, runs: Sequence[Any], rows: Optional[list[Row]] = None) -> Optional[dict[str, Any]]:
    """The plotly figure (``{"data": [...], "layout": {...}}``) of one panel for ``runs``, or None when no run
    logged any of its series."""
    rows = panel_rows(panel_id, runs) if rows is None else rows
    if not rows:
        return None
    many = len(runs) > 1
    smoothable = panel_id != "overopt" and panel(panel_id).smooth
    xlabel = "√KL to the reference (KL in nats / sequence)" if panel_id == "overopt" else (
        "optimizer step" if panel_id.startswith("stage-") else "update")
    n = len(rows)
    layout: dict[str, Any] = json.loads(_grid(n))
    data: list[dict[str, Any]] = []
    smoothed: list[tuple[int, Series]] = []  # (trace index, series) of the smoothed curves
    longest = max(len(s.y) for r in rows for s in r.series)
    w0 = default_window(longest)
    w0 = min((w for w in WINDOWS if w < longest), key=lambda w: abs(w - w0), default=1)
    for r_i, row in enumerate(rows, start=1):
        for s in row.series:
            color, dash = _style(s, many)
            if s.kind == "context":
                data.append(_scatter(s, r_i, y=s.y, mode="lines", name=s.name, opacity=0.6,
                                     line={"color": color if many else "#7f7f7f", "width": 1.5, "dash": dash}))
            elif s.kind == "points":
                bars = s.lo is not None and s.hi is not None  # compared policies: points, not a path
                trace = _scatter(s, r_i, y=s.y, mode="markers" if bars else "lines+markers", name=s.name,
                                 marker={"size": 9 if bars else 8}, line={"color": color, "width": 2, "dash": dash})
                if bars:
                    trace["error_y"] = {"type": "data", "symmetric": False,
                                        "array": [h - y for h, y in zip(s.hi, s.y)],
                                        "arrayminus": [y - lo for lo, y in zip(s.lo, s.y)], "thickness": 1.5,
                                        "width": 5}
                data.append(trace)
            elif smoothable and len(s.y) >= MIN_SMOOTH:
                data.append(_scatter(s, r_i, y=s.y, mode="lines", name=f"{s.name} (raw)", showlegend=False,
                                     opacity=0.35, line={"color": color, "width": 1, "dash": dash}))
                smoothed.append((len(data), s))
                data.append(_scatter(s, r_i, y=smooth(s.y, w0), mode="lines", name=f"{s.name} (smoothed)",
                                     line={"color": color, "width": 2.5, "dash": dash}))
            else:
                data.append(_scatter(s, r_i, y=s.y, mode="lines+markers" if len(s.y) < MIN_SMOOTH else "lines",
                                     name=s.name, line={"color": color, "width": 2, "dash": dash},
                                     marker={"size": 6}))
        layout["yaxis" if r_i == 1 else f"yaxis{r_i}"]["title"] = {"text": row.label, "font": {"size": 13}}
    layout["xaxis" if n == 1 else f"xaxis{n}"]["title"] = {"text": xlabel, "font": {"size": 13}}
    for k, ax in layout.items():
        if k.startswith("xaxis"):
            ax.update(showgrid=True, gridcolor="#e5e5e5", zeroline=False, tickfont={"size": 12})
        elif k.startswith("yaxis"):
            ax.update(showgrid=True, gridcolor="#e5e5e5", zerolinecolor="#cccccc", exponentformat="e",
                      tickfont={"size": 12}, automargin=True)
    layout.update({
        "height": 150 + 240 * n + (70 if smoothed else 0), "font": FONT, "plot_bgcolor": "white",
        "paper_bgcolor": "white", "hovermode": "x unified", "margin": {"l": 80, "r": 30, "t": 30, "b": 60},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "left", "x": 0,
                   "font": {"size": 12}},
    })
    if smoothed:
        unit = "updates" if xlabel == "update" else "steps"
        steps = []
        for w in (w for w in WINDOWS if w == 1 or w < longest):
            steps.append({"label": _window_label(w), "method": "restyle",
                          "args": [{"y": [smooth(s.y, w) for _, s in smoothed],
                                    "name": [f"{s.name} ({'raw' if w <= 1 else 'smoothed'})" for _, s in smoothed]},
                                   [i for i, _ in smoothed]]})
        labels = [st["label"] for st in steps]
        layout["sliders"] = [{"active": labels.index(_window_label(w0)), "steps": steps, "pad": {"t": 55},
                              "currentvalue": {"prefix": f"smoothing — centred mean over this many {unit} "
                                                         "(pale lines: raw values): ", "font": {"size": 13}},
                              "font": {"size": 12}, "len": 0.6}]
    return {"data": data, "layout": layout}


def figure_html(fig, div_id: str) -> str:
    """A figure as a ``<div>`` and the ``<script>`` that draws it (plotly.js must be on the page already)."""
    pio, _ = _plotly()
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=CONFIG, validate=False,
                       default_width="100%", default_height=f"{fig['layout']['height']}px")


# ------------------------------------------------------------------------------------------------ the PNG summary

PNG_CELLS: tuple[tuple[str, int], ...] = (
    ("score", 0), ("kl", 0), ("overopt", -1), ("entropy", 1), ("length", 0), ("text", 0), ("eval", 0),
    ("clipfrac", 0), ("lr", 0), ("time", 0), ("approx_kl", 0), ("value", 0))
"""Candidate cells of the PNG grid in order: (panel, row; -1 = the first judge's row, else the proxy's)."""


def _flat_zero(rows: list[Row]) -> bool:
    values = [v for r in rows for s in r.series for v in s.y]
    return bool(values) and all(v == 0 for v in values)


def summary_png(runs: Sequence[Any], dpi: int = 100) -> bytes:
    """The main plots of ``runs`` as one PNG: a 2 × 3 grid, one quantity per axis, raw values pale under their
    moving average. Needs matplotlib (the ``report`` extra)."""
    import io

    try:  # Figure objects draw off-screen on their own: no pyplot, no backend switch in the caller's process
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the PNG needs matplotlib: pip install 'tether[report]'") from None
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    used = 0
    many = len(runs) > 1
    for pid, row_i in PNG_CELLS:
        if used == len(axes):
            break
        rows = panel_rows(pid, runs)
        if not rows or (pid == "clipfrac" and _flat_zero(rows)):
            continue
        row = rows[row_i] if 0 <= row_i < len(rows) else rows[1] if row_i < 0 and len(rows) > 1 else rows[0]
        ax = axes[used]
        used += 1
        smoothable = pid != "overopt" and panel(pid).smooth
        for s in row.series:
            color, dash = _style(s, many)
            ls = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-."}[dash]
            if s.kind == "context":
                ax.plot(s.x, s.y, color=color if many else "#7f7f7f", alpha=0.6, linewidth=1.2, linestyle=ls,
                        label=s.name)
            elif s.kind == "points":
                yerr = None if s.lo is None or s.hi is None else [
                    [y - lo for y, lo in zip(s.y, s.lo)], [hi - y for y, hi in zip(s.y, s.hi)]]
                ax.errorbar(s.x, s.y, yerr=yerr, color=color, marker="o", markersize=4, linewidth=1.5, capsize=3,
                            linestyle="none" if yerr is not None else ls, label=s.name)
            elif smoothable and len(s.y) >= MIN_SMOOTH:
                ax.plot(s.x, s.y, color=color, alpha=0.3, linewidth=0.8, linestyle=ls)
                ax.plot(s.x, smooth(s.y, default_window(len(s.y))), color=color, linewidth=1.8, linestyle=ls,
                        label=f"{s.name} (smoothed)")
            else:
                ax.plot(s.x, s.y, color=color, linewidth=1.6, linestyle=ls, marker="o" if len(s.y) < 10 else None,
                        markersize=3, label=s.name)
        if pid == "overopt":
            title = OVEROPT_TITLE.split(":")[0] + f": {row.label} vs √KL"
        else:  # a panel of several quantities shows one of them here: title it by that quantity
            title = panel(pid).title if len(rows) == 1 else row.label[:1].upper() + row.label[1:]
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("√KL (nats / sequence)" if pid == "overopt" else "update", fontsize=10)
        ax.set_ylabel(row.label, fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best", framealpha=0.7)
    for ax in axes[used:]:
        ax.set_visible(False)
    fig.suptitle("tether report — " + ", ".join(r.name for r in runs), fontsize=14)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
