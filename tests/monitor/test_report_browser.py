"""The report in a real headless browser (Chromium): the page renders with no console message (no error, no warning,
no uncaught exception) and every plot has data on screen — each figure's SVG holds as many drawn traces as the
figure has, each with a drawn line or marker. Two controls show that the check can fail: a page with a script error,
and one with a figure emptied of its data.

The browser is Debian's ``chromium`` (``make test`` installs it with apt-get when missing); ``TETHER_CHROMIUM`` names
another binary. Without one the test fails with one line saying how to install it — it is never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _streams import healthy, pipeline_dir, write_run

from tether.monitor.report import load_run, write_report
from tether.monitor.report_figures import figure
from tether.monitor.report_panels import PLOT_IDS, has_stage

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
         "--dump-dom"]


def chromium() -> str:
    for name in (os.environ.get("TETHER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.fail("the report's browser test needs Chromium: apt-get install chromium (make test installs it), or "
                "set TETHER_CHROMIUM", pytrace=False)


def render(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of ``page`` in headless Chromium."""
    profile = tmp / f"profile-{page.stem}"
    r = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and "<html" in r.stdout[:200], r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return r.stdout, console


class Drawn(HTMLParser):
    """Per plotly figure (``div#fig-*``): its traces in the plot area and which of them have a line or a marker."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str, str]] = []  # (tag, class, id)
        self.traces: dict[str, list[bool]] = {}

    def _fig(self) -> str | None:
        return next((i for _, _, i in reversed(self.stack) if i.startswith("fig-")), None)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls, id_ = a.get("class") or "", a.get("id") or ""
        fig = self._fig() if not id_.startswith("fig-") else id_
        in_plot = any("scatterlayer" in c for _, c, _ in self.stack)
        if fig and tag == "g" and in_plot and cls.split()[:1] == ["trace"]:
            self.traces.setdefault(fig, []).append(False)
        if fig and tag == "path" and in_plot and self.traces.get(fig):
            d = a.get("d") or ""
            line = "js-line" in cls and len(re.findall(r"[-\d.]+", d)) >= 4  # at least two points joined
            if line or cls.split()[:1] == ["point"]:
                self.traces[fig][-1] = True
        if tag == "div" and id_.startswith("fig-"):
            self.traces.setdefault(id_, [])
        if tag not in {"meta", "img", "br", "hr", "link", "input"}:
            self.stack.append((tag, cls, id_))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def drawn(dom: str) -> dict[str, list[bool]]:
    p = Drawn()
    p.feed(dom)
    return p.traces


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """One report with everything to draw: two PPO runs with different configs (overlay, config diff) and a
    pipeline directory (SFT and RM stages, eval/results.json)."""
    tmp = tmp_path_factory.mktemp("browser")
    a = write_run(tmp / "run_a", healthy(30, seed=0))
    b = write_run(tmp / "run_b", healthy(20, seed=5))
    (b / "final" / "tether_config.yaml").write_text("policy: runs/sft\nkl_coef: 0.1\nnum_updates: 20\n")
    dirs = [a, b, pipeline_dir(tmp)]
    return tmp, write_report(dirs, tmp / "report.html"), dirs


def test_report_renders_in_a_browser_with_every_plot_drawn(page):
    tmp, path, dirs = page
    dom, console = render(path, tmp)
    assert console == [], console
    runs = [load_run(d) for d in dirs]
    figs = {f"fig-{pid}": figure(pid, runs) for pid in PLOT_IDS if has_stage(pid, runs)}
    expected = {k: len(f["data"]) for k, f in figs.items() if f is not None}
    assert len(expected) == len(PLOT_IDS)  # every plot of the report applies to these runs
    got = drawn(dom)
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for fig_id, n in expected.items():
        assert len(got[fig_id]) == n, (fig_id, len(got[fig_id]), n)  # every trace drawn
        assert all(got[fig_id]), (fig_id, got[fig_id])                # each with a line or markers


def test_the_browser_check_catches_errors_and_empty_plots(page):
    """A control: the same page with a script error and the score figure emptied of its traces fails both checks."""
    tmp, path, _ = page
    text = path.read_text(encoding="utf-8")
    start = text.index('"fig-score",')  # Plotly.newPlot("fig-score", [traces], layout, config)
    data_at = text.index("[", start)
    end = text.index("}],", data_at) + 2
    text = text[:data_at] + "[]" + text[end:]
    bad = tmp / "bad.html"
    bad.write_text(text.replace("<nav>", "<script>notAFunction();</script><nav>", 1), encoding="utf-8")
    dom, console = render(bad, tmp)
    assert any("notAFunction" in ln for ln in console), console
    assert drawn(dom)["fig-score"] == [] and all(drawn(dom)["fig-kl"])
