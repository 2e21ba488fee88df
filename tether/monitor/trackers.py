"""The trackers of ``report_to`` (TensorBoard, W&B, MLflow, trackio), through accelerate's tracker classes.

:func:`check_trackers` refuses a tracker whose package is missing (one line naming the extra to install), before any
training. :class:`Trackers` opens them at a run's first logged step, sends each logged step's numbers (and sample
tables where the tracker has them), logs the config once per tracker run, and keeps what a resumed run needs in
``<output_dir>/trackers.json``: each tracker run's id and the last step sent to it.

Resuming: W&B (``id`` with ``resume="allow"``), MLflow (``run_id``) and trackio (the run name with ``resume="allow"``)
continue the same run; steps the interrupted process had already sent are not sent again, so no step appears twice
(a resumed run repeats those steps with the same numbers; W&B buffers, so a process killed outright may lose its
last steps there, never double them). TensorBoard instead drops what the interrupted process
wrote from the resumed step on (``purge_step``), so its curve is the resumed run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from tether.errors import ConfigError
from tether.monitor.run_files import write_text_atomic

STATE_FILE = "trackers.json"
"""Per tracker: the id of its run and the last step sent (``{"wandb": {"id": ..., "step": 12}, ...}``)."""

EXTRA = "pip install 'tether[trackers]'"

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def _available(name: str) -> bool:
    from accelerate.utils import (is_mlflow_available, is_tensorboard_available, is_trackio_available,
                                  is_wandb_available)

    return {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available,
            "trackio": is_trackio_available}[name]()


def check_trackers(names: Sequence[str], field: str = "report_to") -> None:
    """Raise a one-line ``ConfigError`` when a tracker of ``names`` cannot be imported (``field``: the option)."""
    for name in names:
        if not _available(name):
            extra = "pip install 'tether[report]'" if name == "tensorboard" else EXTRA
            raise ConfigError(f"{field}: {name} needs the `{_PACKAGES[name]}` package, which is not installed "
                              f"({extra}), or drop {name} from {field}")


def tracker_names(monitor: Any, field: str = "report_to") -> list[str]:
    """The trackers a run with ``monitor`` (a ``MonitorConfig``) logs to, checked (:func:`check_trackers`):
    TensorBoard by default is dropped quietly when its package is missing, named explicitly it is required."""
    names = monitor.trackers()
    if "tensorboard" in names and "report_to" not in monitor.model_fields_set and not _available("tensorboard"):
        names.remove("tensorboard")
    check_trackers(names, field)
    return names


def stage_monitor(cfg: Any) -> Any:
    """The ``MonitorConfig`` of a stage config: its ``monitor`` section (PPO), or the defaults with the stage's own
    ``report_to`` (SFT, RM) and no PPO alarms."""
    from tether.config.monitor import AlarmConfig, MonitorConfig

    section = getattr(cfg, "monitor", None)
    if isinstance(section, MonitorConfig):
        return section
    given = {"report_to": cfg.report_to} if "report_to" in getattr(cfg, "model_fields_set", ()) else {}
    return MonitorConfig(alarms=AlarmConfig(enabled=False), **given)


def check_stage_trackers(cfg: Any) -> None:
    """Refuse a stage config whose trackers are not installed; stages call it first, before loading anything."""
    tracker_names(stage_monitor(cfg), "monitor.report_to" if hasattr(cfg, "monitor") else "report_to")


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"monitor.alarms.kl_max": 10.0, ...}`` with scalar values (lists and None as text), the
    shape every tracker's hyper-parameter table takes."""
    out: dict[str, Any] = {}
    for k, v in (config or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


WANDB_BUSY_WAIT_S = 60.0
"""How long a resumed run waits for W&B to release a run id that a killed process still holds (its W&B service
outlives it for a moment) before failing with one line."""


def _start(name: str, tracker: Any) -> None:
    """``tracker.start()``; for W&B, retried while the run id is still "in use" by the service of a process that was
    killed just before this resume."""
    import time

    deadline = time.monotonic() + WANDB_BUSY_WAIT_S
    while True:
        try:
            tracker.start()
            return
        except Exception as err:  # wandb's ServerResponseError; its module path moves between versions
            if name != "wandb" or "in use" not in str(err):
                raise
            if time.monotonic() > deadline:
                raise ConfigError(f"report_to: W&B still holds run {tracker.init_kwargs.get('id')} after "
                                  f"{WANDB_BUSY_WAIT_S:.0f} s ({err}); wait for the killed process's W&B service to "
                                  "end, then resume again") from None
            time.sleep(2.0)


class Trackers:
    """The trackers ``names`` for the run in ``run_dir`` (see the module docstring). ``fresh``: the run starts from
    nothing, so new tracker runs are made (else the stored ones are continued); ``wandb_project``: the W&B project
    (None: ``WANDB_PROJECT``, else ``tether``)."""

    def __init__(self, run_dir: Path, names: Sequence[str], *, fresh: bool, wandb_project: Optional[str] = None):
        self.run_dir, self.names = Path(run_dir), list(names)
        self.wandb_project, self.fresh = wandb_project, fresh
        self.state: dict[str, dict[str, Any]] = {} if fresh else self._read_state()
        self.open: dict[str, Any] = {}

    def _read_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.run_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self) -> None:
        write_text_atomic(self.run_dir / STATE_FILE, json.dumps(self.state, indent=1) + "\n")

    # ----------------------------------------------------------------------------------------- start
    def start(self, first_step: Optional[int], config: Mapping[str, Any]) -> None:
        """Open every tracker; log ``config`` to those whose run is new (and to W&B on every start)."""
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its state (one process here: cheap)
        for name in self.names:
            kept = self.state.get(name)
            tracker = getattr(self, f"_make_{name}")(kept, first_step)
            _start(name, tracker)
            self.open[name] = tracker
            if name != "tensorboard":
                self.state[name] = {"id": self._run_id(name, tracker), "step": (kept or {}).get("step", 0)}
            # a new tracker run gets the config once; W&B also on resume: a killed process can lose all it buffered,
            # the config included, and W&B config updates only overwrite keys with the same values
            if self.fresh or (kept is None and name != "tensorboard") or name == "wandb":
                tracker.store_init_configuration(flat_config(config))
        self._write_state()

    def _make_tensorboard(self, kept: Any, first_step: Optional[int]):
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker("tb", str(self.run_dir), purge_step=first_step)

    def _make_wandb(self, kept: Optional[dict], first_step: Optional[int]):
        from accelerate.tracking import WandBTracker

        project = self.wandb_project or os.environ.get("WANDB_PROJECT") or "tether"
        kwargs: dict[str, Any] = {"name": self.run_dir.name, "dir": os.environ.get("WANDB_DIR") or str(self.run_dir)}
        if kept:
            kwargs.update(id=kept["id"], resume="allow")
        return WandBTracker(project, **kwargs)

    def _make_mlflow(self, kept: Optional[dict], first_step: Optional[int]):
        from accelerate.tracking import MLflowTracker

        return MLflowTracker(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tether",
                             run_id=kept["id"] if kept else None, run_name=self.run_dir.name)

    def _make_trackio(self, kept: Optional[dict], first_step: Optional[int]):
        from accelerate.tracking import TrackioTracker

        name = kept["id"] if kept else self.run_dir.name
        return TrackioTracker(os.environ.get("TRACKIO_PROJECT") or "tether", name=name,
                              resume="allow" if kept else "never")

    @staticmethod
    def _run_id(name: str, tracker: Any) -> str:
        if name == "wandb":
            return tracker.run.id
        if name == "mlflow":
            return tracker.active_run.info.run_id
        return tracker.run.name  # trackio: runs are found by name

    # ----------------------------------------------------------------------------------------- each step
    def log(self, scalars: Mapping[str, float], step: int, samples: Optional[Sequence[Mapping[str, Any]]] = None,
            markdown: str = "") -> None:
        """Send one step's numbers (and sample rows) to every tracker that has not had this step yet."""
        sent = False
        for name, tracker in self.open.items():
            kept = self.state.get(name)
            if kept is not None and step <= kept["step"]:
                continue  # the interrupted process sent this step already
            tracker.log(self._keys(name, scalars), step=step)
            if samples and name == "tensorboard":
                tracker.writer.add_text("samples", markdown, step)
            elif samples and name == "wandb":
                cols = list(samples[0])
                tracker.log_table("samples", columns=cols, data=[[r.get(c) for c in cols] for r in samples],
                                  step=step)
            if kept is not None:
                kept["step"], sent = step, True
        if sent:
            self._write_state()

    def _keys(self, name: str, scalars: Mapping[str, float]) -> dict[str, float]:
        """The numbers as ``name`` takes them: the same keys, except that MLflow's file store (a directory per key
        part) cannot hold both ``objective/score`` and ``objective/score/rm``, so there ``/`` is written ``.``."""
        if name == "mlflow" and self._mlflow_file_store():
            return {k.replace("/", "."): v for k, v in scalars.items()}
        return dict(scalars)

    @staticmethod
    def _mlflow_file_store() -> bool:
        import mlflow

        uri = mlflow.get_tracking_uri()
        return uri.startswith("file:") or "://" not in uri

    def text(self, key: str, text: str, step: int) -> None:
        """A text entry (alarms) where the tracker shows text (TensorBoard)."""
        if "tensorboard" in self.open:
            self.open["tensorboard"].writer.add_text(key, text, step)
            self.open["tensorboard"].writer.flush()

    def finish(self) -> None:
        for tracker in self.open.values():
            tracker.finish()
        self.open = {}
