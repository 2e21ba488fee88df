"""The run around the steps of every stage (SFT, RM, PPO), written once.

A :class:`RunLoop` owns what is not the stage's maths: the step counter and where the run resumes from, the NaN/Inf
skip streak and its stop message, the checkpoint cadence, pre-emption (SIGTERM/Ctrl-C), the final checkpoint, the
``metrics.jsonl`` log, and the held-out evaluation with its "best" checkpoint when due. A stage hands it its models,
optimizers, schedulers and any other object with ``state_dict``/``load_state_dict`` (a KL controller, a data order),
and calls it in three places::

    loop = RunLoop(run, total=..., models=..., optimizers=..., schedulers=..., stateful=..., ...)
    def step():
        ...                                   # the stage's maths: one optimizer step, or one PPO update
        loop.advance(skipped=..., reason=...) # count it (skips feed the streak)
        loop.log(record)                      # metrics.jsonl, the monitor, held-out evaluation, the skip stop
    loop.run(step, bar)                       # cadence, kill points, pre-emption, the final checkpoint

The data order of the offline stages is :class:`EpochOrder` (one seeded permutation per epoch, resumable mid-epoch;
docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn

from tether.console import quiet_libraries
from tether.engine.checkpoint import checkpoint_name, kill_point, rng_state, set_rng_state, step_of
from tether.engine.dist import Dist, current
from tether.engine.outputs import MetricsWriter
from tether.engine.preemption import StopRequest
from tether.engine.sharding import (
    checkpoint_weights, clip_grad_norm, is_sharded, load_optimizer_state, optimizer_state,
)
from tether.engine.run_dir import RunDir, read_jsonl
from tether.errors import CheckpointError, Preempted, TrainingError


class HeldOut(Protocol):
    """Held-out evaluation the loop runs when due (``tether.eval.heldout``)."""

    def due(self, step: int) -> bool: ...
    def __call__(self) -> dict[str, float]: ...
    def is_best(self, record: Mapping[str, Any]) -> bool: ...


class Monitor(Protocol):
    """What the loop tells the monitor (``tether.monitor.logger.RunLogger``); it only watches."""

    def on_update(self, metrics: Mapping[str, Any], samples: Any = None, completions: Any = None) -> Any: ...
    def resume(self, records: Sequence[Mapping[str, Any]], *, fresh: bool) -> None: ...
    def close(self, report: Optional[bool] = None) -> Any: ...


@dataclass
class StepStatus:
    """Optimizer-step guard outcome (:func:`guarded_step`)."""

    stepped: bool
    norms: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    """Why the step was skipped: ``non-finite loss`` or ``non-finite <model> gradient``."""


def guarded_step(params: Mapping[str, list[nn.Parameter]], optimizers: Mapping[str, torch.optim.Optimizer],
                 max_grad_norm: Optional[float], finite_loss: bool, frozen: Sequence[str] = (),
                 dist: Optional[Dist] = None) -> StepStatus:
    """Clip each model's accumulated gradients to ``max_grad_norm`` (None: no clip) and step its optimizer, unless
    the loss or any gradient norm is not finite: then every gradient is dropped and nothing steps. One norm per
    model gives the clip and the finiteness check in one pass. ``frozen``: models whose optimizer does not step
    (PPO's policy during the critic warm-up). The caller zeroes gradients for the next step.

    ``dist`` (several processes): the ranks first agree on the loss (a non-finite loss on any rank skips the step on
    all), then each model's gradients are summed over ranks, so the norm, the clip and the step are the same
    everywhere."""
    if dist is not None and dist.distributed:
        finite_loss = not dist.any(not finite_loss)
        if finite_loss:
            for ps in params.values():
                dist.sum_gradients(ps)
    if not finite_loss:
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        return StepStatus(False, reason="non-finite loss")
    limit = max_grad_norm or float("inf")
    norms = {k: clip_grad_norm(ps, limit) for k, ps in params.items() if ps}
    for k, norm in norms.items():
        if not math.isfinite(norm):
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            return StepStatus(False, norms, reason=f"non-finite {k} gradient")
    for k in params:
        if k not in frozen:
            optimizers[k].step()
    return StepStatus(True, norms)


class NullMonitor:
    """The monitor of a process that does not log (every rank but the main one)."""

    @dataclass
    class _Watched:
        metrics: dict[str, Any] = field(default_factory=dict)

    def on_update(self, metrics: Mapping[str, Any], samples: Any = None, completions: Any = None) -> Any:
        return self._Watched()

    def resume(self, records: Sequence[Mapping[str, Any]], fresh: bool = True) -> None:
        pass

    def close(self, report: Optional[bool] = None) -> Any:
        return None


class EpochOrder:
    """The data order of an offline stage: one permutation of ``n_rows`` per epoch from a seeded generator, cut
    into micro-batches of ``batch_size`` and grouped ``grad_accum`` to an optimizer step. Its state (the generator
    at the start of the epoch, the epoch, the next micro-batch) lets a resumed run replay the same permutation and
    start where the uninterrupted one would be."""

    def __init__(self, n_rows: int, batch_size: int, grad_accum: int, num_epochs: int, seed: int):
        self.n_rows, self.batch_size, self.grad_accum, self.num_epochs = n_rows, batch_size, grad_accum, num_epochs
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.next = 0, 0
        self._epoch_gen = self.gen.get_state()
        self._micro: Optional[list[list[int]]] = None

    def _draw(self) -> None:
        self._epoch_gen = self.gen.get_state()
        order = torch.randperm(self.n_rows, generator=self.gen).tolist()
        self._micro = [order[i : i + self.batch_size] for i in range(0, self.n_rows, self.batch_size)]

    def groups(self) -> Iterator[tuple[int, int, list[list[int]], int]]:
        """``(epoch, first micro-batch index, the step's micro-batches, micro-batches in the epoch)`` per step."""
        while self.epoch < self.num_epochs:
            if self._micro is None:
                self._draw()
            micro = self._micro
            while self.next < len(micro):
                g = self.next
                self.next = g + self.grad_accum
                yield self.epoch, g, micro[g : g + self.grad_accum], len(micro)
            self.epoch, self.next, self._micro = self.epoch + 1, 0, None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next_micro": self.next, "generator": self._epoch_gen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.next = int(state["epoch"]), int(state["next_micro"])
        self.gen.set_state(state["generator"])
        self._micro = None


class RunLoop:
    """One stage run's steps (see the module docstring). Building it starts the run: :meth:`RunDir.begin` makes the
    directory consistent, and a checkpoint to continue from is loaded into ``models``, ``optimizers``,
    ``schedulers`` and ``stateful``, with the RNG, the step counter, the skip streak and ``extra``. On a finished run
    it holds the final checkpoint's state when that one is readable (``finished`` is True; :meth:`run` does nothing).

    ``unit``: what a step is called in messages and checkpoint names (``step``, ``update``); ``skip_noun``: what the
    streak counts in the stop message (``optimizer step`` / ``update``); ``skip_phrase``: why those count
    (``skipped for a non-finite loss or gradient`` / ``without an optimizer step (last cause: {reason})``, where
    ``{reason}`` is the last skip's cause). ``monitor``: a ``RunLogger``;
    ``heldout`` (optional): the evaluation run when due, whose best result is saved by ``save_best``.
    """

    def __init__(self, run: RunDir, *, total: int, models: Mapping[str, nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, Any],
                 checkpoint_every: int, keep_checkpoints: int, max_consecutive_skips: int,
                 skip_noun: str, skip_phrase: str, stateful: Optional[Mapping[str, Any]] = None,
                 samples_log: Optional[str] = None, time_limit_s: Optional[float] = None,
                 dist: Optional[Dist] = None):
        self.dist = current(dist)
        """The processes of the run: only the main one writes files; every rank restores the checkpoints."""
        self.run_dir, self.out = run, run.out
        self.total, self.models = total, models
        self.optimizers, self.schedulers = optimizers, schedulers
        self.stateful = dict(stateful or {})
        self.checkpoint_every, self.keep, self.max_skips = checkpoint_every, keep_checkpoints, max_consecutive_skips
        self.skip_noun, self.skip_phrase = skip_noun, skip_phrase
        self.unit = run.unit
        self.samples_log = samples_log
        self.time_limit_s = time_limit_s
        """Stop after the step during which :meth:`elapsed` reaches this (None: run all ``total`` steps)."""
        self.step = 0
        """Steps done (skipped ones included: each consumes its batch and a step of the schedule)."""
        self.skip_streak = 0
        """Steps in a row in which no optimizer step could be taken (non-finite reward, loss or gradient)."""
        self.skip_reason = ""
        self.extra: dict[str, Any] = {}
        """JSON-able values the stage keeps with each checkpoint (last losses, evaluation results)."""
        self.history: list[dict[str, Any]] = []
        """Every record of ``metrics.jsonl`` (also those before a resume)."""
        self.checkpoint_path: Optional[Path] = None
        self.finished = run.finished
        self.monitor: Optional[Monitor] = None
        self.heldout: Optional[HeldOut] = None
        self.save_best: Optional[Callable[[], Any]] = None
        self._stop: Optional[StopRequest] = None
        elapsed = self._start()
        self._elapsed_at_start = elapsed
        self._t0 = time.perf_counter() - elapsed

    # ------------------------------------------------------------------ start
    def _start(self) -> float:
        if self.finished:
            self.step = self.total
            self.history = read_jsonl(self.out / "metrics.jsonl")
            try:
                found = self.run_dir.checkpoint
            except CheckpointError:
                found = None
            if found is None or found.step != self.total:
                return 0.0
        else:
            found = self.run_dir.begin() if self.dist.is_main else None
            self.dist.barrier()  # the main process has made the directory consistent; the others only read it
            if not self.dist.is_main:
                found = self.run_dir.checkpoint
            if found is None:
                return 0.0
            self.run_dir.check_total(self.total)
        state = self.run_dir.restore(self.models)
        for k, opt in self.optimizers.items():
            model = self.models.get(k)
            if is_sharded(model):  # the whole state, saved by name; each rank keeps its shard
                load_optimizer_state(model, opt, state["optimizers"][k])
            else:
                opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        for k, obj in self.stateful.items():
            obj.load_state_dict(state[k])
        ranks = state.get("rng_ranks")
        same_world = isinstance(ranks, list) and len(ranks) == self.dist.world_size
        set_rng_state(ranks[self.dist.rank] if same_world else state["rng"])
        self.step, self.skip_streak = int(state[self.unit]), int(state["skip_streak"])
        self.extra = json.loads(state.get("extra", "{}"))
        self.history = read_jsonl(self.out / "metrics.jsonl")
        self.checkpoint_path = found.path
        return float(state.get("elapsed_s", 0.0))

    @property
    def fresh(self) -> bool:
        """True when the run starts from nothing (no checkpoint resumed)."""
        return self.checkpoint_path is None and not self.finished

    def watch(self, monitor: Monitor, heldout: Optional[HeldOut] = None,
              save_best: Optional[Callable[[], Any]] = None) -> None:
        """Attach the monitor and the held-out evaluation with its best save, both given the run's earlier records
        (so trend alarms and the best result carry on across a resume) and whether the run starts from nothing (so
        trackers continue their earlier runs only on a resume)."""
        if not self.dist.is_main:  # one process logs; the others only train
            monitor, save_best = NullMonitor(), None
        self.monitor, self.heldout, self.save_best = monitor, heldout, save_best
        monitor.resume(self.history, fresh=self.fresh)
        for record in self.history if heldout is not None else ():
            heldout.is_best(record)

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes."""
        return time.perf_counter() - self._t0

    def out_of_time(self) -> bool:
        """True once ``time_limit_s`` is set and :meth:`elapsed` has reached it."""
        return self.time_limit_s is not None and self.elapsed() >= self.time_limit_s

    # ------------------------------------------------------------------ each step
    def advance(self, *, skipped: bool, reason: str = "") -> int:
        """Count one step (``skipped``: no optimizer step was taken, for ``reason``); returns the new step number."""
        self.step += 1
        if skipped:
            self.skip_streak += 1
            self.skip_reason = reason or self.skip_reason
        else:
            self.skip_streak = 0
        return self.step

    def log(self, record: Mapping[str, Any], *, samples: Optional[Sequence[Mapping[str, Any]]] = None,
            completions: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """End a step: run the held-out evaluation when due, let the monitor see the record (its ``text/*``
        statistics are added), append it to ``metrics.jsonl`` (and ``samples`` to the samples log), save the "best"
        model when this evaluation is the best so far, then stop (``TrainingError``) after ``max_consecutive_skips``
        skipped steps in a row. An empty record is not logged. Returns the record as written."""
        written: dict[str, Any] = {}
        if record:
            record = dict(record)
            due = self.heldout is not None and (self.heldout.due(self.step) or self.out_of_time())
            evaluated = self.heldout() if due else {}  # the last step of a time-limited run is evaluated too
            record.update(evaluated)
            if self.monitor is not None:
                watched = self.monitor.on_update(record, samples=samples, completions=completions)
                record.update(watched.metrics)
            written = (MetricsWriter(self.out / "metrics.jsonl", overwrite=False).write(record)
                       if self.dist.is_main else record)
            self.history.append(written)
            if samples and self.samples_log and self.dist.is_main:
                writer = MetricsWriter(self.out / self.samples_log, overwrite=False)
                for row in samples:
                    writer.write(row)
            if evaluated and self.heldout.is_best({**record, self.unit: self.step}) and self.save_best:
                self.save_best()
        if self.skip_streak >= self.max_skips:
            raise TrainingError(self.stop_message())
        return written

    def stop_message(self) -> str:
        last = self.checkpoint_path or "none (the run will start over)"
        n = self.skip_streak
        why = self.skip_phrase.format(reason=self.skip_reason)
        return (f"{self.unit} {self.step}: {n} {self.skip_noun}{'s' if n > 1 else ''} in a row {why}; stopped. "
                f"Last good checkpoint: {last}")

    # ------------------------------------------------------------------ the run
    def run(self, step: Callable[[], Any], bar: Any, postfix: Optional[Callable[[], Mapping[str, Any]]] = None
            ) -> None:
        """Call ``step`` until ``total`` steps are done (or, with ``time_limit_s``, until the step during which the
        limit is reached), checkpointing every ``checkpoint_every`` steps and when a stop was asked (then
        ``Preempted``), and once more at the end unless the run resumed from that step. A monitor attached is closed
        (with the report only on success). Libraries are quiet while it runs (``tether.console.quiet_libraries``);
        ``bar`` is a ``tether.console.progress``."""
        try:
            with StopRequest() as stop, quiet_libraries():
                bar.n = bar.initial = self.step  # a resumed run's progress (rate, ETA) starts where it stopped
                bar.refresh()
                # a run resumed at or past its time limit takes no step; a fresh one takes at least one
                spent = self.time_limit_s is not None and self._elapsed_at_start >= self.time_limit_s
                while self.step < self.total and not spent:
                    step()
                    if postfix is not None:
                        bar.set_postfix(postfix(), refresh=False)
                    bar.update(1)
                    kill_point(f"after-{self.unit}:{self.step}")
                    if self.dist.any(self.out_of_time()):  # every rank stops after the same step
                        break
                    due = self.checkpoint_every and self.step % self.checkpoint_every == 0
                    # every rank stops at the same step when any of them got the signal
                    stopping = self.dist.any(stop.requested is not None) if self.step < self.total else False
                    if self.step < self.total and (due or stopping):
                        path = self.save()
                        if stopping:
                            bar.close()
                            why = stop.requested or "a signal to another process"
                            raise Preempted(f"pre-empted ({why}) after {self.unit} {self.step} of "
                                            f"{self.total}; checkpoint {path} written. Run the same command again "
                                            "to resume")
                bar.close()
                if self.checkpoint_path is None or step_of(self.checkpoint_path) != self.step:
                    self.save()
        except BaseException:
            if self.monitor is not None:
                self.monitor.close(report=False)
            raise

    def _optimizer_state(self, name: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()``, or the whole state of a sharded model's optimizer (a collective)."""
        model = self.models.get(name)
        return optimizer_state(model, optimizer) if is_sharded(model) else optimizer.state_dict()

    def save(self) -> Path:
        """Checkpoint the run as it stands: weights, optimizers, schedulers, stateful parts, RNG, counters."""
        state = {
            self.unit: self.step,
            "skip_streak": self.skip_streak,
            "optimizers": {k: self._optimizer_state(k, o) for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            **{k: obj.state_dict() for k, obj in self.stateful.items()},
            "rng": rng_state(),
            "elapsed_s": self.elapsed(),
            "extra": json.dumps(self.extra),
        }
        if self.dist.distributed:
            state["rng_ranks"] = self.dist.gather(state["rng"])  # each rank resumes its own generators
        # a sharded model's whole weights, gathered on the main process (every rank takes part)
        models = {k: checkpoint_weights(m) if is_sharded(m) else m for k, m in self.models.items()}
        if self.dist.is_main:
            path = self.run_dir.save(self.step, models, state, total=self.total, keep=self.keep).path
        else:
            path = self.run_dir.root / checkpoint_name(self.unit, self.step)
        self.dist.barrier()  # the checkpoint is complete before any rank goes on
        self.checkpoint_path = path
        return path
