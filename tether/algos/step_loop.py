"""The bookkeeping around the SFT and reward-model optimisation loops: step counter, position in the data order,
NaN/Inf skips, checkpoints, resume and pre-emption. The loops keep their own maths; this keeps their runs.

The data order is a seeded generator drawing one permutation per epoch; a checkpoint stores the generator's state at
the start of its epoch, the epoch and the next micro-batch, so a resumed run replays the same permutation and starts
at the micro-batch where the uninterrupted one would be (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tether.algos.common import step_scheduler
from tether.algos.preemption import StopRequest
from tether.algos.run_dir import RunDir
from tether.checkpoint import kill_point, rng_state, set_rng_state, step_of
from tether.errors import Preempted, TrainingError


class StepLoop:
    """One SFT/RM run's steps. Building it starts the run (:meth:`RunDir.begin`) and, when resuming, loads the
    checkpoint into ``models``, ``optimizer`` and ``scheduler``. Use it as a context manager around the loop (graceful
    SIGTERM/Ctrl-C), iterate :meth:`epochs`, call :meth:`optimizer_step` and :meth:`after_step` each step and
    :meth:`finish` after the loop.

    ``cfg`` needs ``seed``, ``num_epochs``, ``checkpoint_every``, ``keep_checkpoints`` and ``max_consecutive_skips``.
    """

    def __init__(self, run: RunDir, cfg: Any, models: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                 scheduler: Any, total_steps: int):
        self.run, self.cfg, self.models = run, cfg, models
        self.optimizer, self.scheduler, self.total = optimizer, scheduler, total_steps
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        """Optimizer steps done (skipped ones included: each consumes its batch and a step of the schedule)."""
        self.skip_streak = 0
        self.extra: dict[str, Any] = {}
        """Loop values the caller saved with the checkpoint resumed from (last losses, evaluation results)."""
        self.checkpoint_path: Optional[Path] = None
        self._stop: Optional[StopRequest] = None
        self._epoch0 = self._next0 = 0
        self._epoch, self._epoch_gen, self._next = 0, self.gen.get_state(), 0
        elapsed = 0.0
        found = run.begin()
        self.fresh = found is None
        if found is not None:
            run.check_total(total_steps)
            state = run.restore(models)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.gen.set_state(state["generator"])
            self.step, self.skip_streak = int(state["step"]), int(state["skip_streak"])
            self._epoch0, self._next0 = int(state["epoch"]), int(state["next_micro"])
            self._epoch, self._epoch_gen, self._next = self._epoch0, state["generator"], self._next0
            self.extra = json.loads(state["extra"])
            elapsed = float(state["elapsed_s"])
            self.checkpoint_path = found.path
        self._t0 = time.perf_counter() - elapsed

    def __enter__(self) -> "StepLoop":
        self._stop = StopRequest().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._stop.__exit__(*exc)
            self._stop = None

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes."""
        return time.perf_counter() - self._t0

    def epochs(self, n_rows: int, batch_size: int) -> Iterator[tuple[int, list[list[int]], int]]:
        """``(epoch, micro-batches of row indices, first micro-batch to run)`` for each epoch left; stops once
        ``total_steps`` steps are done."""
        for epoch in range(self._epoch0, self.cfg.num_epochs):
            if self.step >= self.total:
                return
            self._epoch, self._epoch_gen = epoch, self.gen.get_state()
            order = torch.randperm(n_rows, generator=self.gen).tolist()
            micro = [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]
            yield epoch, micro, self._next0 if epoch == self._epoch0 else 0

    def optimizer_step(self, params: list[nn.Parameter], max_grad_norm: Optional[float],
                       finite_loss: bool) -> tuple[float, bool]:
        """Clip and step, or skip the step when the loss or the gradient norm is not finite; then advance the schedule
        and the step counter. Returns ``(gradient norm, whether the optimizer stepped)``."""
        norm = float("nan")
        if finite_loss:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
        stepped = finite_loss and math.isfinite(norm)
        if stepped:
            self.optimizer.step()
            self.skip_streak = 0
        else:
            self.skip_streak += 1
            what = "gradient" if finite_loss else "loss"
            print(f"tether: step {self.step + 1}: non-finite {what}, optimizer step skipped", file=sys.stderr,
                  flush=True)
        step_scheduler(self.scheduler)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return norm, stepped

    def after_step(self, next_micro: int, **extra: Any) -> None:
        """Call once the step is logged: stops after too many skips, checkpoints when due or when a stop was asked.
        ``next_micro``: index of the next micro-batch of this epoch; ``extra``: JSON-able values to checkpoint."""
        self._next, self.extra = next_micro, extra
        if self.skip_streak >= self.cfg.max_consecutive_skips:
            last = self.checkpoint_path or "none (the run will start over)"
            n = self.skip_streak
            raise TrainingError(f"step {self.step}: {n} optimizer step{'s' if n > 1 else ''} in a row skipped for a "
                                f"non-finite loss or gradient; stopped. Last good checkpoint: {last}")
        kill_point(f"after-step:{self.step}")
        every = self.cfg.checkpoint_every
        requested = self._stop is not None and self._stop.requested
        if self.step < self.total and ((every and self.step % every == 0) or requested):
            path = self.save()
            if requested:
                raise Preempted(f"pre-empted ({requested}) after step {self.step} of {self.total}; checkpoint {path} "
                                "written. Run the same command again to resume")

    def finish(self, **extra: Any) -> None:
        """After the loop: the final checkpoint (unless the run resumed from it)."""
        self.extra = extra
        if self.checkpoint_path is None or step_of(self.checkpoint_path) != self.step:
            self.save()

    def save(self) -> Path:
        """Checkpoint the run as it stands."""
        state = {
            "step": self.step,
            "epoch": self._epoch,
            "next_micro": self._next,
            "generator": self._epoch_gen,
            "skip_streak": self.skip_streak,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "elapsed_s": self.elapsed(),
            "extra": json.dumps(self.extra),
        }
        found = self.run.save(self.step, self.models, state, total=self.total, keep=self.cfg.keep_checkpoints)
        self.checkpoint_path = found.path
        return found.path
