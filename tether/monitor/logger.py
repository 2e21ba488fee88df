"""``RunLogger``: everything a run logs besides ``metrics.jsonl`` (which the trainer writes itself).

After each update the trainer calls :meth:`RunLogger.on_update` with the update's metric dict, optionally the sample
rows it wrote to ``samples.jsonl`` and the rollout's completions. The logger

1. adds degeneration statistics of the completions (``text/*``, see :func:`tether.monitor.alarms.text_stats`),
   returned for the trainer to merge into its metrics before writing ``metrics.jsonl``;
2. sends every numeric metric to the trackers of ``report_to`` (TensorBoard under ``<run>/tb``, W&B, MLflow, trackio:
   :mod:`tether.monitor.trackers`, through accelerate's trackers); sample rows go to TensorBoard as a markdown table
   and to W&B as a table;
3. checks the alarms: new ones are printed as one ``tether: warning:`` line each and appended to ``alarms.jsonl``;
   a fatal configuration raises :class:`tether.monitor.alarms.AlarmError`.

:meth:`close` flushes the writers and writes ``report.html``. ``run_info.json`` (config, library versions, start
time) is written once when the logger is made.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tether.config.monitor import AlarmConfig, MonitorConfig
from tether.console import warn
from tether.monitor.alarms import Alarm, AlarmChecker, AlarmError, check_all, text_stats
from tether.monitor.report import write_report
from tether.monitor.run_files import library_versions, write_bytes_atomic, write_text_atomic
from tether.monitor.trackers import STATE_FILE, Trackers, stage_monitor, tracker_names


@dataclass
class UpdateResult:
    """What :meth:`RunLogger.on_update` found: extra metrics to log, and the alarms firing now (``new``: since this
    update)."""

    metrics: dict[str, float] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)
    new: list[Alarm] = field(default_factory=list)


def sample_table_markdown(rows: Sequence[Mapping[str, Any]], max_chars: int = 300) -> str:
    """Sample rows as a markdown table (prompt, completion, then every numeric column)."""
    if not rows:
        return ""
    num_cols = [k for k in rows[0] if k not in ("prompt", "completion", "update")
                and isinstance(rows[0][k], (int, float))]

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        s = str(x).replace("\n", " ").replace("|", "\\|")
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    head = ["prompt", "completion", *num_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(k, "")) for k in head) + " |")
    return "\n".join(lines)


class RunLogger:
    """Live logging and alarms for one run directory (see the module docstring).

    ``run_dir``: where the run writes (``output_dir``); ``config``: the :class:`MonitorConfig` (default: defaults);
    ``run_config``: the stage's resolved config (a pydantic model or mapping) recorded in ``run_info.json``;
    ``stage``: ``ppo``, ``sft`` or ``rm`` (names the TensorBoard run); ``critic_warmup_updates``: so the critic alarm
    waits for the warm-up; ``step_key``: the metric holding the step number (``update`` for PPO, ``step`` for
    SFT/RM). ``quiet``: no warnings on stderr (they still go to ``alarms.jsonl``). ``autocast``: the run's forward
    precision (``none``/``bfloat16``), which sets the default tolerances of the log-prob consistency alarms.
    """

    def __init__(self, run_dir: str | Path, config: Optional[MonitorConfig] = None, *, run_config: Any = None,
                 stage: str = "ppo", critic_warmup_updates: int = 0, step_key: str = "update",
                 quiet: bool = False, autocast: str = "none"):
        self.run_dir = Path(run_dir)
        self.cfg = config or MonitorConfig()
        self.stage, self.step_key, self.quiet = stage, step_key, quiet
        self.checker = AlarmChecker(self.cfg.alarms.model_copy(update={"fatal": False}), critic_warmup_updates,
                                    autocast)
        self.calls = 0
        self.closed = False
        self.last: dict[str, Any] = {}
        self.started = False
        self.fresh = True
        self._run_config = run_config
        self.names = tracker_names(self.cfg, "monitor.report_to" if stage == "ppo" else "report_to")  # missing: now
        self.trackers: Optional[Trackers] = None

    def _start(self, first_step: Optional[int] = None) -> None:
        """Open the trackers and write ``run_info.json`` at the first logged step (``first_step``), so that a run
        failing before it leaves nothing behind. Multi-process runs: this is the one place to keep the trackers to
        the main process."""
        if self.started:
            return
        self.started = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = _plain_config(self._run_config) or {}
        if self.names:
            self.trackers = Trackers(self.run_dir, self.names, fresh=self.fresh, wandb_project=self.cfg.wandb_project)
            self.trackers.start(first_step, config)
        info = {"stage": self.stage, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": library_versions(), "command": " ".join(sys.argv),
                "config": _plain_config(self._run_config), "monitor": self.cfg.model_dump(mode="json")}
        write_text_atomic(self.run_dir / "run_info.json", json.dumps(info, indent=1, default=str) + "\n")

    # ----------------------------------------------------------------------------------------- per update
    def on_update(self, metrics: Mapping[str, Any], samples: Optional[Sequence[Mapping[str, Any]]] = None,
                  completions: Optional[Sequence[str]] = None) -> UpdateResult:
        """Log one update (see the module docstring). ``samples``: rows ``{prompt, completion, score, <source>...}``
        to show as a table (pass them on the updates the trainer writes ``samples.jsonl``); ``completions``: every
        completion of the rollout, for the degeneration statistics (default: those of ``samples``). Returns the
        metrics to add to ``metrics.jsonl`` (``text/*``) and the alarms."""
        if self.closed:
            raise RuntimeError("RunLogger.on_update after close()")
        self.calls += 1
        step = metrics.get(self.step_key)
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else self.calls
        self._start(step)
        if completions is None and samples:
            completions = [str(r.get("completion", "")) for r in samples]
        extra: dict[str, Any] = {}
        if completions is not None:
            extra = text_stats(list(completions), self.cfg.alarms.ngram)
        record = {**metrics, **extra}
        self.last = record
        scalars = {k: float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   and k != self.step_key}
        if self.trackers is not None:
            self.trackers.log(scalars, step, samples, sample_table_markdown(samples) if samples else "")
        alarms = self.checker.check(record)
        new = list(self.checker.new)
        if new:
            with open(self.run_dir / "alarms.jsonl", "a", encoding="utf-8") as f:
                for a in new:
                    f.write(json.dumps(a.as_dict()) + "\n")
            if not self.quiet:
                for a in new:
                    warn(a.message)
            if self.trackers is not None:
                self.trackers.text("alarms", "\n\n".join(a.message for a in new), step)
        if alarms and self.cfg.alarms.fatal:
            self.close(report=True)
            raise AlarmError(f"stopped by an alarm (monitor.alarms.fatal=true): {alarms[0].message}")
        numeric_extra = {k: v for k, v in extra.items() if isinstance(v, (int, float))}
        return UpdateResult(numeric_extra, alarms, new)

    def resume(self, records: Sequence[Mapping[str, Any]], *, fresh: Optional[bool] = None) -> None:
        """After a resume: take the run's earlier ``metrics.jsonl`` records into the alarm history without logging
        them again, so trend alarms carry on where they were. ``fresh``: the run starts from nothing (default: when
        there are no records); otherwise the trackers continue their earlier runs."""
        self.fresh = not records if fresh is None else fresh
        for r in records:
            self.checker.observe(r)
            self.calls += 1
        if self.checker.cfg.enabled and self.checker.history:
            now = check_all(self.checker.history, self.checker.cfg, self.checker.critic_warmup_updates,
                            self.checker.autocast)
            self.checker.active = {(a.name, a.metric) for a in now}

    def postfix(self) -> dict[str, str]:
        """The few numbers for a progress line (score, KL, β, clip fraction) plus the firing alarms' names."""
        m, out = self.last, {}
        for key, short, fmt in (("objective/score", "score", ".3f"), ("objective/kl", "kl", ".3f"),
                                ("objective/kl_coef", "beta", ".3g"), ("policy/clipfrac", "clip", ".3f"),
                                ("loss", "loss", ".4f")):
            v = m.get(key)
            if isinstance(v, (int, float)):
                out[short] = format(v, fmt)
        if self.checker.active:
            out["alarm"] = ",".join(sorted({name for name, _ in self.checker.active}))
        return out

    # ----------------------------------------------------------------------------------------- end of run
    def close(self, report: Optional[bool] = None) -> Optional[Path]:
        """Flush and close the writers; write ``report.html`` (unless ``report`` or the config says no). Returns the
        report's path, or None. A report that cannot be written is a warning, never a lost run."""
        if self.closed:
            return None
        self.closed = True
        if not self.started and not report:  # nothing was logged: leave the run directory as it was
            return None
        self._start()
        if self.trackers is not None:
            self.trackers.finish()
        if not (self.cfg.report if report is None else report):
            return None
        try:
            return write_report([self.run_dir], self.run_dir / "report.html")
        except ImportError as err:
            warn(f"report not written ({err}); pip install 'tether[report]'")
        except (OSError, ValueError) as err:
            warn(f"report not written: {err}")
        return None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _plain_config(cfg: Any) -> Any:
    if cfg is None:
        return None
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, Mapping):
        return json.loads(json.dumps(dict(cfg), default=str))
    return str(cfg)


__all__ = ["AlarmConfig", "MonitorConfig", "RunLogger", "UpdateResult", "library_versions", "sample_table_markdown",
           "write_bytes_atomic", "write_text_atomic"]


STAGE_LOG_FILES = ("tb", "run_info.json", "alarms.jsonl", STATE_FILE, "wandb")
"""What a :class:`RunLogger` writes into a run directory before the model is saved there; ``save_model_atomic``
must keep these when it swaps the model directory in."""


def stage_logger(run_dir: str | Path, run_config: Any, stage: str) -> RunLogger:
    """The logger of an SFT or reward-model run: its ``report_to`` trackers and ``run_info.json`` as the steps are
    logged, the report at :meth:`RunLogger.close`; no PPO alarms (they read PPO metrics), steps counted by ``step``."""
    return RunLogger(run_dir, stage_monitor(run_config), run_config=run_config, stage=stage, step_key="step",
                     quiet=True)
