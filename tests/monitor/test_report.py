"""The HTML report from small fixture runs: valid, self-contained, every expected plot present (checked in the
file, not in pixels), several runs overlaid, pipeline/demo layouts, one-line errors."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest
from _streams import healthy, write_run

pytest.importorskip("matplotlib")

from tether.cli import main  # noqa: E402
from tether.errors import DataError  # noqa: E402
from tether.monitor import report  # noqa: E402
from tether.monitor.report import PLOT_IDS, load_run, write_report  # noqa: E402

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Collects section ids, the images inside each section, and checks that tags nest properly."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not (v.startswith("data:image/png;base64,") or v.startswith("#")):
                self.external.append(v)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"imgs": [], "class": a.get("class", "")}
        if tag == "img":
            self.sections[self.current]["imgs"].append(a)
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
    assert page.scripts == 0 and page.external == [], page.external
    return page


def png_of(img: dict) -> bytes:
    data = base64.b64decode(img["src"].split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "run_a", healthy(30, seed=0))


def test_report_has_every_plot(run_dir, tmp_path):
    out = write_report([run_dir], tmp_path / "r.html")
    page = parse(out)
    ppo_plots = [p for p in PLOT_IDS if not p.startswith("stage-")]
    for pid in ppo_plots:
        sec = page.sections.get(f"plot-{pid}")
        assert sec is not None, pid
        assert len(sec["imgs"]) == 1 and sec["class"] != "missing", pid
        png_of(sec["imgs"][0])
    for sid in ("runs", "alarms", "samples", "config", "versions"):
        assert sid in page.sections
    text = out.read_text()
    assert "Prompt &lt;0&gt; &amp; more" in text  # sample table, escaped
    assert "kl_coef: 0.05" in text                # config
    assert "torch" in text                        # versions
    assert "No alarm fired" in text


def test_missing_series_say_so(tmp_path):
    d = write_run(tmp_path / "nocritic", healthy(12, critic=False, judges=False), samples=False, config=False)
    page = parse(write_report([d], tmp_path / "r.html"))
    for pid in ("value", "overopt", "eval"):
        sec = page.sections[f"plot-{pid}"]
        assert sec["imgs"] == [] and sec["class"] == "missing", pid
    assert page.sections["plot-score"]["imgs"]


def test_two_runs_overlay(run_dir, tmp_path):
    b = write_run(tmp_path / "run_b", healthy(20, seed=5))
    out = write_report([run_dir, b], tmp_path / "both.html")
    page = parse(out)
    assert page.sections["plot-score"]["imgs"] and page.sections["plot-overopt"]["imgs"]
    text = out.read_text()
    assert "run_a" in text and "run_b" in text
    from matplotlib.figure import Figure

    runs = [load_run(run_dir), load_run(b)]
    for pid in ("score", "kl", "length"):
        ax = Figure().subplots()
        assert report._draw_into(ax, pid, runs)
        labels = [ln.get_label() for ln in ax.get_lines()]
        assert any(lb.startswith("run_a · ") for lb in labels) and any(lb.startswith("run_b · ") for lb in labels)


def test_alarms_in_the_report(tmp_path):
    s = healthy(20)
    for r in s:
        r["objective/kl"] = 0.8 * r["update"]
    d = write_run(tmp_path / "hot", s)
    text = write_report([d], tmp_path / "r.html").read_text()
    assert "kl_high" in text and "raise kl_coef" in text and "kl_max" in text


def test_pipeline_layout_with_stages_and_eval_results(tmp_path):
    root = tmp_path / "demo"
    write_run(root / "ppo", healthy(12, judges=False))
    (root / "sft").mkdir()
    (root / "sft" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4, "grad_norm": 1.0}) + "\n" for s in range(1, 6))
        + json.dumps({"step": 5, "eval_loss": 1.0}) + "\n")
    (root / "rm").mkdir()
    (root / "rm" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.7 - 0.05 * s, "accuracy": 0.5 + 0.05 * s, "lr": 1e-4}) + "\n"
        for s in range(1, 6)))
    (root / "eval").mkdir()
    def ci(m):
        return {"mean": m, "lo": m - 0.05, "hi": m + 0.05, "n": 10}

    def pol(vader, rm, kl):
        return {"vader": ci(vader), "rm": ci(rm), "kl": ci(kl), "ref_ppl": ci(12), "tokens": ci(9)}

    results = {"baseline": "sft", "metrics": ["vader", "rm", "kl", "ref_ppl", "tokens"],
               "policies": {"sft": pol(0.1, -0.2, 0.0), "ppo": pol(0.3, 0.3, 3.0)},
               "paired": {"ppo": {"vader": {**ci(0.2), "excludes_0": True}}}}
    (root / "eval" / "results.json").write_text(json.dumps(results))
    out = write_report([root], tmp_path / "demo.html", png=tmp_path / "grid.png")
    page = parse(out)
    for sid in ("plot-stage-sft", "plot-stage-rm", "plot-overopt"):
        assert page.sections[sid]["imgs"], sid
    assert "eval-results" in page.sections
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    run = load_run(root)
    assert run.main_dir == root / "ppo" and set(run.stages) == {"sft", "rm"}
    sft_only = parse(write_report([root / "sft"], tmp_path / "sft.html"))
    assert sft_only.sections["plot-stage-sft"]["imgs"] and "plot-score" not in sft_only.sections


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


def test_missing_matplotlib_is_a_one_line_error(run_dir, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tether[report]" in err[0] and not (run_dir / "report.html").exists()
