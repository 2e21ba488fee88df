"""The HTML report from small fixture runs: valid and self-contained (plotly.js embedded once, nothing fetched), every
expected plot present with its data, one quantity per axis, text ≥ 12 px, smoothing that keeps the raw values and
says so, several runs overlaid with a config diff, run time and the best update in the summary, pipeline/demo
layouts, the PNG, one-line errors. (test_report_browser.py renders the page in a real browser.)"""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import pytest
from _streams import healthy, pipeline_dir, write_run

from tether.cli import main
from tether.errors import DataError
from tether.monitor import report_figures as figures
from tether.monitor.report import best_update, config_diff, load_run, run_times, write_report
from tether.monitor.report_panels import PLOT_IDS, panel, panel_rows, smooth

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Collects section ids, the plotly figures inside each section, the scripts, and checks that tags nest."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.scripts: list[dict] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith("#"):
                self.external.append(v)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"figs": [], "class": a.get("class", "")}
        if tag == "div" and "plotly-graph-div" in (a.get("class") or "") and self.current:
            self.sections[self.current]["figs"].append(a["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "section":
            self.current = None


def parse(path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == [], page.stack
    assert page.external == [], page.external                 # nothing fetched: no src= / href= but #anchors
    assert text.count("* plotly.js v") == 1                    # the library embedded once
    n_figs = sum(len(s["figs"]) for s in page.sections.values())
    assert len(page.scripts) == 1 + n_figs                     # plotly.js, then one newPlot per figure
    return page


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run_a", healthy(30, seed=0))


def _traces(fig) -> list[dict]:
    return fig["data"]


def test_report_has_every_plot_with_data(run_dir, tmp_path):
    out = write_report([run_dir], tmp_path / "r.html")
    page = parse(out)
    runs = [load_run(run_dir)]
    for pid in (p for p in PLOT_IDS if not p.startswith("stage-")):
        sec = page.sections.get(f"plot-{pid}")
        assert sec is not None, pid
        assert sec["figs"] == [f"fig-{pid}"] and sec["class"] != "missing", pid
        traces = _traces(figures.figure(pid, runs))
        assert traces and all(len(t["y"]) > 0 and len(t["x"]) == len(t["y"]) for t in traces), pid
    for sid in ("runs", "alarms", "samples", "config", "versions"):
        assert sid in page.sections
    assert "config-diff" not in page.sections  # one run: nothing to diff
    text = out.read_text()
    assert "Prompt &lt;0&gt; &amp; more" in text  # sample table, escaped
    assert "kl_coef: 0.05" in text                # config
    assert "torch" in text                        # versions
    assert "No alarm fired" in text
    assert out.stat().st_size < 6_000_000         # plotly.js is 4.8 MB of it


def test_the_figure_data_on_the_page_is_the_runs(run_dir, tmp_path):
    """The numbers plotted are the logged ones (the KL series of the page equals metrics.jsonl's)."""
    text = write_report([run_dir], tmp_path / "r.html").read_text()
    start = text.index('"fig-kl",')  # Plotly.newPlot("fig-kl", [traces], layout, config)
    data = json.JSONDecoder().raw_decode(text[text.index("[", start):])[0]
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    raw = next(t for t in data if t["name"] == "objective/kl (raw)")
    assert raw["y"] == [r["objective/kl"] for r in records] and raw["x"] == [r["update"] for r in records]


def test_one_quantity_per_axis(run_dir, tmp_path):
    """No twin axes: every y axis of every figure is one row, holding the keys of one quantity (one Axis spec)."""
    b = write_run(tmp_path / "run_b", healthy(20, seed=5))
    runs = [load_run(run_dir), load_run(b)]
    for pid in (p for p in PLOT_IDS if not p.startswith("stage-")):
        fig = figures.figure(pid, runs)
        layout = fig["layout"]
        yaxes = [k for k in layout if k.startswith("yaxis")]
        assert all("overlaying" not in layout[k] for k in yaxes), pid
        rows = panel_rows(pid, runs)
        assert len(yaxes) == len(rows), pid
        labels = [layout[k]["title"]["text"] for k in sorted(yaxes, key=lambda k: int(k[5:] or 1))]
        assert labels == [r.label for r in rows], pid
        if pid != "overopt":
            specs = panel(pid).axes
            for row in rows:  # the series of a row come from one Axis spec: one unit
                owners = {i for i, a in enumerate(specs) for s in row.series
                          if any(s.name.endswith(k.rstrip("*")) or (k.endswith("/*") and k[:-1] in s.name)
                                 for k in a.keys)}
                assert len(owners) == 1, (pid, row.label, owners)
    kl_rows = [r.label for r in panel_rows("kl", runs)]
    assert kl_rows == ["KL (nats / sequence)", "KL coefficient β"]
    assert [r.label for r in panel_rows("overopt", runs)] == ["proxy reward", "vader score", "afinn score"]


def test_text_is_at_least_12_px(run_dir):
    runs = [load_run(run_dir)]
    for pid in (p for p in PLOT_IDS if not p.startswith("stage-")):
        layout = figures.figure(pid, runs)["layout"]
        assert layout["font"]["size"] >= 12 and layout["legend"]["font"]["size"] >= 12
        for k, ax in layout.items():
            if k.startswith(("xaxis", "yaxis")):
                assert ax["tickfont"]["size"] >= 12, (pid, k)
                if "title" in ax:
                    assert ax["title"].get("font", {"size": 13})["size"] >= 12
        for slider in layout.get("sliders", []):
            assert slider["font"]["size"] >= 12 and slider["currentvalue"]["font"]["size"] >= 12
    import re

    from tether.monitor.report import CSS

    assert all(int(px) >= 13 for px in re.findall(r"font-size:(\d+)px", CSS))


def test_smooth_oracle():
    assert smooth([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert smooth([0.0, 3.0, 6.0, 0.0], 3) == [1.5, 3.0, 3.0, 3.0]   # ends: the points that exist
    assert smooth([0.05] * 20, 9) == [0.05] * 20                      # a constant stays exactly constant
    ys = [math.sin(i) for i in range(50)]
    assert len(smooth(ys, 11)) == 50 and abs(sum(smooth(ys, 11)) - sum(ys)) < 5


def test_smoothing_keeps_the_raw_values_and_says_so(run_dir):
    fig = figures.figure("score", [load_run(run_dir)])
    traces = _traces(fig)
    raw = next(t for t in traces if t["name"] == "objective/score (raw)")
    sm = next(t for t in traces if t["name"] == "objective/score (smoothed)")
    assert raw["opacity"] < 1 and sm["line"]["width"] > raw["line"]["width"]
    slider = fig["layout"]["sliders"][0]
    assert "smoothing" in slider["currentvalue"]["prefix"] and "raw" in slider["currentvalue"]["prefix"]
    labels = [st["label"] for st in slider["steps"]]
    assert labels[0] == "off" and all(int(x) < 30 for x in labels[1:])
    w0 = int(labels[slider["active"]])
    assert list(sm["y"]) == smooth(list(raw["y"]), w0)
    i_sm = traces.index(sm)
    for st in slider["steps"]:
        update, idx = st["args"]
        k = idx.index(i_sm)
        w = 1 if st["label"] == "off" else int(st["label"])
        assert update["y"][k] == smooth(list(raw["y"]), w)
        assert update["name"][k].endswith("(raw)" if w == 1 else "(smoothed)")
    few = figures.figure("eval", [load_run(run_dir)])  # 6 evaluations: drawn as they are, with markers
    assert all("(smoothed)" not in t["name"] and "markers" in t["mode"] for t in _traces(few))


def test_missing_series_say_so(tmp_path):
    d = write_run(tmp_path / "nocritic", healthy(12, critic=False, judges=False), samples=False, config=False)
    page = parse(write_report([d], tmp_path / "r.html"))
    for pid in ("value", "overopt", "eval"):
        sec = page.sections[f"plot-{pid}"]
        assert sec["figs"] == [] and sec["class"] == "missing", pid
    assert page.sections["plot-score"]["figs"]


def test_two_runs_overlay_with_a_config_diff(run_dir, tmp_path):
    b = write_run(tmp_path / "run_b", healthy(20, seed=5))
    (b / "final" / "tether_config.yaml").write_text("policy: runs/sft\nkl_coef: 0.1\nnum_updates: 20\n"
                                                    "monitor: {judges: [vader]}\n")
    out = write_report([run_dir, b], tmp_path / "both.html")
    page = parse(out)
    assert page.sections["plot-score"]["figs"] and page.sections["plot-overopt"]["figs"]
    runs = [load_run(run_dir), load_run(b)]
    for pid in ("score", "kl", "length"):
        names = [t["name"] for t in _traces(figures.figure(pid, runs))]
        assert any(n.startswith("run_a · ") for n in names) and any(n.startswith("run_b · ") for n in names)
    diff = dict(config_diff(runs))
    assert diff == {"kl_coef": [0.05, 0.1], "num_updates": [30, 20], "monitor.judges": [None, ["vader"]]}
    sec = out.read_text().split('id="config-diff"')[1].split("</section>")[0]
    assert "kl_coef" in sec and "num_updates" in sec and "policy" not in sec  # only what differs


def test_summary_has_run_time_and_the_best_update(run_dir, tmp_path):
    run = load_run(run_dir)
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expect = sum(r["time/rollout_s"] + r["time/score_s"] + r["time/update_s"] for r in records)
    assert run_times(run) == {"ppo": pytest.approx(expect)}
    best = best_update(run)  # no judges in the config: the first judge logged, eval/vader (0.1 + 0.01·u)
    assert (best.metric, best.at, best.mode) == ("eval/vader", 30, "max") and best.value == pytest.approx(0.4)
    (run_dir / "final" / "tether_config.yaml").write_text(
        "kl_coef: 0.05\nmonitor: {judges: [afinn], best_metric: eval/proxy, best_mode: min}\n")
    best = best_update(load_run(run_dir))
    assert (best.metric, best.mode, best.at) == ("eval/proxy", "min", 5)
    text = write_report([run_dir], tmp_path / "r.html").read_text()
    summary = text.split('id="runs"')[1].split("</section>")[0]
    assert "run time" in summary and f"ppo {int(expect) // 60}m" in summary
    assert "eval/proxy = -0.25 at update 5 (lowest)" in summary and "highest training score" in summary


def test_alarms_in_the_report(tmp_path):
    s = healthy(20)
    for r in s:
        r["objective/kl"] = 0.8 * r["update"]
    d = write_run(tmp_path / "hot", s)
    text = write_report([d], tmp_path / "r.html").read_text()
    assert "kl_high" in text and "raise kl_coef" in text and "kl_max" in text


def test_pipeline_layout_with_stages_and_eval_results(tmp_path):
    root = pipeline_dir(tmp_path)
    out = write_report([root], tmp_path / "demo.html", png=tmp_path / "grid.png")
    page = parse(out)
    for sid in ("plot-stage-sft", "plot-stage-rm", "plot-overopt"):
        assert page.sections[sid]["figs"], sid
    assert "eval-results" in page.sections
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1500, 800)  # 15 × 8 in at 100 dpi
    run = load_run(root)
    assert run.main_dir == root / "ppo" and set(run.stages) == {"sft", "rm"}
    assert run_times(run)["sft"] == 11.0
    overopt = panel_rows("overopt", [run])
    vader = next(r for r in overopt if r.label == "vader score")
    assert vader.series[0].x == [0.0, pytest.approx(math.sqrt(3.0))] and vader.series[0].lo == [0.05, 0.25]
    sft_only = parse(write_report([root / "sft"], tmp_path / "sft.html"))
    assert sft_only.sections["plot-stage-sft"]["figs"] and "plot-score" not in sft_only.sections
    b = best_update(load_run(root / "sft"))
    assert (b.metric, b.at, b.value) == ("eval_loss", 5, 1.0)


def test_torn_last_line_is_skipped_and_bad_lines_are_one_line_errors(run_dir, tmp_path):
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"update": 31, "objective/sc')
    assert len(load_run(run_dir).metrics) == 30
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "not json")
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics.jsonl:4: not valid JSON"):
        load_run(run_dir)
    with pytest.raises(DataError, match="not a tether run directory"):
        load_run(tmp_path)


def test_report_command(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and "report written" in capsys.readouterr().out
    assert main(["report", str(run_dir), str(run_dir), "--out", str(tmp_path / "x.html")]) == 0
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tether: error: ") and "missing" in err[0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_plotly_is_a_one_line_error(run_dir, monkeypatch, capsys):
    import sys

    for mod in ("plotly", "plotly.graph_objects", "plotly.io", "plotly.subplots", "plotly.offline"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plotly" in err[0] and "tether[report]" in err[0]
    assert not (run_dir / "report.html").exists()


def test_missing_matplotlib_only_matters_for_the_png(run_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", str(run_dir), "--png", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "tether[report]" in err[0]
    assert not (run_dir / "report.html").exists() and not (tmp_path / "x.png").exists()
    assert main(["report", str(run_dir)]) == 0  # the HTML report needs plotly only
