"""A training run's output directory: whether it is finished, where it resumes from, and how it checkpoints.

Every stage (SFT, RM, PPO) uses one :class:`RunDir`. The rules (docs/reliability.md):

- ``resume: auto`` continues from the newest checkpoint that verifies; an unusable newer one is reported on one
  warning line and skipped. No checkpoint (and no finished model): a fresh start, which discards logs an earlier
  attempt left before its first checkpoint. A finished run with a compatible config is left as it is.
- ``resume: never`` starts over, and refuses an output directory that already holds a run.
- ``resume: <checkpoint directory>`` continues from exactly that checkpoint.
- A checkpoint (or finished model) made with a config that differs in a field that changes the result is refused
  with one line naming the field. ``RESUME_SAFE`` fields of the config class may differ; ``RUN_LENGTH`` fields may
  grow when the learning-rate schedule is ``constant`` (otherwise the schedule, hence every step, would change).
- ``restart=True`` (the pipeline's ``force``) discards the previous run: its checkpoints, logs and finish marker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel
from torch import nn

from tether.config.base import dump
from tether.config.dpo import DPOConfig
from tether.config.ppo import PPOConfig
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig
from tether.console import note
from tether.engine import checkpoint as ckpt
from tether.engine.dist import Dist
from tether.engine.outputs import recover_model_dir
from tether.errors import CheckpointError

CHECKPOINTS = "checkpoints"
_MISSING = object()


def _json_config(cfg: BaseModel) -> dict[str, Any]:
    return json.loads(json.dumps(dump(cfg)))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at_default(cfg: BaseModel, name: str, value: Any) -> bool:
    """``value`` (JSON form) is field ``name``'s default: a field a later version added, left at its default, is
    not a change of a run made before it existed."""
    field = type(cfg).model_fields.get(name)
    if field is None or field.is_required():
        return False
    default = field.get_default(call_default_factory=True)
    try:
        as_json = json.loads(json.dumps(default.model_dump(mode="json") if isinstance(default, BaseModel) else default))
    except (TypeError, ValueError):
        return False
    return as_json == value


def config_change(saved: Mapping[str, Any], cfg: BaseModel) -> Optional[str]:
    """None when ``cfg`` may continue a run made with config ``saved``; else a short reason naming the field. A field
    missing from ``saved`` counts as changed only when ``cfg`` sets it to something other than its default."""
    current = _json_config(cfg)
    safe = getattr(type(cfg), "RESUME_SAFE", frozenset())
    length = getattr(type(cfg), "RUN_LENGTH", frozenset())
    changed = [k for k in sorted(set(saved) | set(current))
               if k not in safe and saved.get(k, _MISSING) != current.get(k, _MISSING)
               and not (k not in saved and _at_default(cfg, k, current.get(k, _MISSING)))]
    for k in changed:
        if k not in length:
            old = "unset" if k not in saved else _short(saved[k])
            return f"{k} was {old}, now {_short(current.get(k))}"
    for k in changed:
        if current.get("lr_schedule") != "constant":
            return (f"{k} was {_short(saved.get(k))}, now {_short(current.get(k))}, and the "
                    f"{current.get('lr_schedule')} learning-rate schedule depends on the run length")
    return None


class RunDir:
    """The output directory of one stage run. Construct it before loading models: it only reads (apart from undoing
    an interrupted final save), and refuses (``CheckpointError``, one line) what cannot be resumed or would be
    overwritten.

    ``stage``: ``"sft"``/``"rm"``/``"ppo"`` (a checkpoint of another stage is refused); ``unit``: what the step
    counter counts (``"step"``, ``"update"``); ``marker``: the file whose presence means the final model is saved
    (its ``tether_config.yaml``, written last); ``logs``: files in ``out_dir`` copied into each checkpoint and restored
    from it on resume.
    """

    def __init__(self, out_dir: str | Path, cfg: BaseModel, *, stage: str, unit: str, marker: str | Path,
                 logs: tuple[str, ...] = ("metrics.jsonl",), restart: bool = False):
        self.out = Path(out_dir)
        self.cfg = cfg
        self.stage, self.unit = stage, unit
        self.root = self.out / CHECKPOINTS
        self.marker = Path(marker)
        self.logs = logs
        self.restart = restart
        self.resume: str = getattr(cfg, "resume", "auto")
        self.finished = False
        """The final model is saved, with a config this run may reuse: there is nothing left to do."""
        self._checkpoint: Optional[ckpt.Checkpoint] = None
        self._chosen = False
        recover_model_dir(self.marker.parent)
        if restart:
            return
        if self.resume == "never":
            if self.holds_run():
                raise CheckpointError(f"{self.out}: already holds a run, and resume=never does not overwrite one; "
                                      "choose a new output_dir, or drop resume=never to continue it")
            return
        if self.resume != "auto":
            if not Path(self.resume).is_dir():
                raise CheckpointError(f"{self.resume}: checkpoint not found (resume= takes auto, never, or a "
                                      "checkpoint directory)")
            self._check_meta(Path(self.resume), ckpt.read_meta(self.resume))
            return
        self._inspect_auto()

    # ------------------------------------------------------------------ inspection (read-only)
    def holds_run(self) -> bool:
        """True when the directory has a finished model, a checkpoint or a log of this stage."""
        return (self.marker.is_file() or bool(ckpt.list_checkpoints(self.root))
                or any((self.out / log).is_file() for log in self.logs))

    def _check_meta(self, path: Path, meta: Optional[dict]) -> None:
        if meta is None:
            return  # unreadable: reported when the checkpoint is opened
        if meta.get("stage") != self.stage:
            raise CheckpointError(f"{path}: a {meta.get('stage')} checkpoint, not a {self.stage} one")
        why = config_change(meta.get("config") or {}, self.cfg)
        if why is not None:
            raise CheckpointError(f"{path}: made with another config ({why}); resume with the same config, or start "
                                  "over in a new output_dir")

    def _inspect_auto(self) -> None:
        if self.marker.is_file():
            try:
                saved = yaml.safe_load(self.marker.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                saved = None
            if isinstance(saved, dict):
                why = config_change(saved, self.cfg)
                if why is not None:
                    raise CheckpointError(f"{self.out}: holds a finished run made with another config ({why}); "
                                          "use a new output_dir to train with this one")
                length = getattr(type(self.cfg), "RUN_LENGTH", frozenset())
                current = _json_config(self.cfg)
                if all(saved.get(k) == current.get(k) for k in length):
                    self.finished = True
                    return
                if not ckpt.list_checkpoints(self.root):
                    raise CheckpointError(f"{self.out}: holds a finished run but no checkpoint to extend it from; "
                                          "use a new output_dir")
        for path in ckpt.list_checkpoints(self.root):
            meta = ckpt.read_meta(path)
            if meta is not None:
                self._check_meta(path, meta)
                return

    # ------------------------------------------------------------------ choosing and restoring
    @property
    def checkpoint(self) -> Optional[ckpt.Checkpoint]:
        """The verified checkpoint this run continues from (None: a fresh start). Decided once, on first access:
        unusable newer checkpoints are reported and skipped (``auto``); an unusable named one is refused."""
        if not self._chosen:
            self._chosen = True
            self._checkpoint = self._choose()
        return self._checkpoint

    def _choose(self) -> Optional[ckpt.Checkpoint]:
        if self.restart or self.resume == "never":
            return None
        if self.resume != "auto":
            path = Path(self.resume)
            try:
                found = ckpt.open_checkpoint(path)
            except CheckpointError as err:
                good = self._newest_good(exclude=path)
                hint = f"; the newest good one is {good.path} (resume={good.path})" if good else ""
                raise CheckpointError(f"{err}{hint}") from None
            self._check_meta(path, found.meta)
            return found
        bad: list[str] = []
        for path in ckpt.list_checkpoints(self.root):
            try:
                found = ckpt.open_checkpoint(path)
            except CheckpointError as err:
                bad.append(str(err))
                note(f"warning: skipping an unusable checkpoint: {err}")
                continue
            self._check_meta(path, found.meta)
            return found
        if bad:
            raise CheckpointError(f"{bad[0]}; no earlier good checkpoint in {self.root} (move it away to start over)")
        return None

    def _newest_good(self, exclude: Path) -> Optional[ckpt.Checkpoint]:
        for path in ckpt.list_checkpoints(self.root):
            if path.resolve() == exclude.resolve():
                continue
            try:
                return ckpt.open_checkpoint(path)
            except CheckpointError:
                continue
        return None

    def begin(self) -> Optional[ckpt.Checkpoint]:
        """Make the directory consistent with the chosen start before training writes anything: on resume, drop
        checkpoints newer than the one resumed from and restore the logs it saved; on a fresh start, drop the logs,
        checkpoints and finish marker of an earlier attempt. Returns the checkpoint (None: fresh)."""
        found = self.checkpoint
        ckpt.remove_temporaries(self.root)
        for log in self.logs:  # what an interrupted restore of a log left
            for tmp in self.out.glob(f".{log}.tmp-*"):
                tmp.unlink(missing_ok=True)
        if found is None:
            if self.restart:
                for path in ckpt.list_checkpoints(self.root):
                    ckpt.discard(path)
                self.marker.unlink(missing_ok=True)
            for log in self.logs:
                (self.out / log).unlink(missing_ok=True)
            return None
        for path in ckpt.list_checkpoints(self.root):
            if path.resolve() != found.path.resolve() and (ckpt.step_of(path) or 0) >= found.step:
                note(f"warning: discarding {path}, newer than the checkpoint resumed from")
                ckpt.discard(path)
        for log in self.logs:
            data = found.read_bytes(log)
            if data is not None:
                ckpt.atomic_write_bytes(self.out / log, data)
            else:
                (self.out / log).unlink(missing_ok=True)
        if found.path.parent.resolve() == self.root.resolve():
            ckpt.atomic_write_text(self.root / ckpt.LATEST, found.path.name + "\n")
        self.marker.unlink(missing_ok=True)  # the model there (if any) is not the one this run will end with
        note(f"resuming from {found.path} ({self.unit} {found.step})")
        return found

    def check_total(self, total: int) -> None:
        """Refuse a checkpoint beyond the end of this run (its run length was shortened)."""
        found = self.checkpoint
        if found is not None and found.step > total:
            raise CheckpointError(f"{found.path}: is at {self.unit} {found.step}, past the {total} {self.unit}s of "
                                  "this run; keep the run length, or start over in a new output_dir")

    def restore(self, models: Mapping[str, nn.Module]) -> dict[str, Any]:
        """Load the chosen checkpoint's weights into ``models`` and return its saved state."""
        found = self.checkpoint
        if found is None:
            raise RuntimeError("restore() without a checkpoint to resume from")
        missing = [name for name in models if f"{name}.safetensors" not in found.meta["files"]]
        if missing:
            raise CheckpointError(f"{found.path}: has no weights for {missing[0]} (saved by another kind of run)")
        for name, model in models.items():
            found.load_model(name, model)
        return found.load_state()

    # ------------------------------------------------------------------ writing
    def save(self, step: int, models: Mapping[str, nn.Module], state: Mapping[str, Any], *, total: int,
             keep: int) -> ckpt.Checkpoint:
        """Write checkpoint ``<unit>-<step>`` (models, state, current logs, config) and keep the newest ``keep``."""
        files = {log: (self.out / log).read_bytes() for log in self.logs if (self.out / log).is_file()}
        meta = {"stage": self.stage, "step": step, "total": total, "unit": self.unit,
                "finished": step >= total, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "config": _json_config(self.cfg)}
        path = ckpt.write_checkpoint(self.root, ckpt.checkpoint_name(self.unit, step), models=models, state=state,
                                     files=files, meta=meta)
        ckpt.prune(self.root, keep)
        return ckpt.Checkpoint(path, {**meta, "format_version": ckpt.FORMAT_VERSION})


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL log (an absent file: none)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


MARKER = "tether_config.yaml"
DPO_REF_FILE = "reference_logps.safetensors"
"""DPO's precomputed reference log-probabilities in its output_dir: a run log, copied into each checkpoint."""


def stage_run_dir(cfg: BaseModel, *, restart: bool = False, dist: Optional[Dist] = None) -> RunDir:
    """The :class:`RunDir` of an SFT, RM, DPO or PPO config, with that stage's layout: SFT and RM save their model in
    ``output_dir`` itself, DPO and PPO in ``output_dir/final``; PPO's checkpoints also carry ``samples.jsonl``, DPO's
    its precomputed reference log-probabilities. With several processes (``dist``) the main one opens it first (it
    may undo an interrupted final save), then the others."""
    if dist is not None and dist.distributed:
        run = _stage_run_dir(cfg, restart) if dist.is_main else None
        dist.barrier()
        return run if run is not None else _stage_run_dir(cfg, restart)
    return _stage_run_dir(cfg, restart)


def _stage_run_dir(cfg: BaseModel, restart: bool) -> RunDir:
    out = Path(cfg.output_dir)
    if isinstance(cfg, PPOConfig):
        return RunDir(out, cfg, stage="ppo", unit="update", marker=out / "final" / MARKER,
                      logs=("metrics.jsonl", "samples.jsonl"), restart=restart)
    if isinstance(cfg, DPOConfig):
        return RunDir(out, cfg, stage="dpo", unit="step", marker=out / "final" / MARKER,
                      logs=("metrics.jsonl", DPO_REF_FILE), restart=restart)
    for cls, stage in ((SFTConfig, "sft"), (RMConfig, "rm")):
        if isinstance(cfg, cls):
            return RunDir(out, cfg, stage=stage, unit="step", marker=out / MARKER, restart=restart)
    raise TypeError(f"no run directory layout for {type(cfg).__name__}")
