"""What the offline stages (SFT, RM, DPO) share around their loss: the schedule, the optimizer and the run loop over a
seeded epoch order (:func:`start_offline_run`), and the guarded optimizer step (:func:`offline_step`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tether.console import note
from tether.engine.dist import Dist, current
from tether.engine.loop import EpochOrder, NullMonitor, RunLoop, guarded_step
from tether.engine.optim import build_optimizer, build_scheduler, step_scheduler
from tether.engine.run_dir import RunDir
from tether.errors import ConfigError
from tether.monitor.logger import stage_logger


@dataclass
class OfflineRun:
    """One SFT or RM run as its step function uses it."""

    loop: RunLoop
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[nn.Parameter]
    groups: Iterator[tuple[int, int, list[list[int]], int]]
    """``(epoch, first micro-batch, the step's micro-batches of row indices, micro-batches in the epoch)`` per step
    (:meth:`EpochOrder.groups`)."""
    total_steps: int
    max_grad_norm: float | None
    dist: Dist
    """The processes: each takes its share (:meth:`Dist.share`) of every micro-batch of the global order."""

    sharded: bool = False
    """The model is sharded (``sharding: fsdp``, tether.engine.sharding): every rank runs every micro-batch."""

    def my_group(self, group: list[list[int]]) -> list[list[int]]:
        """This rank's rows of each micro-batch of a step (empty shares dropped)."""
        return [s for s in (self.dist.share(mb) for mb in group) if s]

    def micro_batches(self, group: list[list[int]]) -> list[tuple[list[int], bool]]:
        """``(rows, counts)`` per micro-batch this rank runs: its share of each (:meth:`my_group`, all counting).
        A sharded model needs the same forwards and backwards on every rank, so there a rank without rows in a
        micro-batch runs the first row of it with ``counts`` False: its loss is multiplied by 0 and left out of
        every statistic."""
        if not self.sharded:
            return [(s, True) for s in self.my_group(group)]
        return [(s, True) if s else (mb[:1], False) for s, mb in ((self.dist.share(mb), mb) for mb in group)]


def start_offline_run(run: RunDir, cfg: Any, model: nn.Module, n_rows: int, stage: str, *, heldout: Any = None,
                      save_best: Any = None, dist: Dist | None = None, sharded: bool = False) -> OfflineRun:
    """The schedule (``num_epochs`` × ⌈micro-batches / ``grad_accum``⌉ steps, at most ``max_steps``), AdamW, the
    learning-rate schedule and the :class:`RunLoop` over ``n_rows`` rows — fresh, or continued from a checkpoint
    (weights, optimizer, schedule, data order, RNG, logs) — watched by the stage logger (TensorBoard,
    ``run_info.json``; the report once the model is saved); ``heldout``/``save_best``: a held-out evaluation the
    loop runs when due and the save of its best result (:meth:`RunLoop.watch`; DPO). With several processes
    (``dist``) the order is the global one (``batch_size`` rows per micro-batch over all processes) and each
    process trains on its share. ``sharded``: the model has been sharded (tether.engine.sharding) before the
    optimizer is built here on its shards."""
    dist = current(dist)
    total_steps = cfg.num_epochs * math.ceil(math.ceil(n_rows / cfg.batch_size) / cfg.grad_accum)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if cfg.warmup_steps >= total_steps:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps} must be < the {total_steps} optimizer steps of this run")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.lr, cfg.weight_decay, eps=cfg.adam_eps)
    scheduler = build_scheduler(optimizer, cfg.lr_schedule, cfg.warmup_steps, total_steps)
    order = EpochOrder(n_rows, cfg.batch_size, cfg.grad_accum, cfg.num_epochs, cfg.seed)
    loop = RunLoop(run, total=total_steps, models={"model": model}, optimizers={"model": optimizer},
                   schedulers={"model": scheduler}, stateful={"order": order},
                   checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                   max_consecutive_skips=cfg.max_consecutive_skips, skip_noun="optimizer step",
                   skip_phrase="skipped for a non-finite loss or gradient", dist=dist)
    if dist.is_main:
        loop.watch(stage_logger(run.out, cfg, stage), heldout, save_best)
    else:
        loop.watch(NullMonitor())
    return OfflineRun(loop, optimizer, scheduler, params, order.groups(), total_steps, cfg.max_grad_norm, dist,
                      sharded)


def offline_step(r: OfflineRun, finite_loss: bool) -> tuple[float, bool]:
    """Clip and step, or skip the step when the loss or the gradient norm is not finite; then advance the schedule
    and the step counter (a skipped step counts too). Returns ``(gradient norm, whether the optimizer stepped)``."""
    status = guarded_step({"model": r.params}, {"model": r.optimizer}, r.max_grad_norm, finite_loss, dist=r.dist)
    if not status.stepped:
        what = "loss" if status.reason == "non-finite loss" else "gradient"
        note(f"step {r.loop.step + 1}: non-finite {what}, optimizer step skipped")
    step_scheduler(r.scheduler)
    r.optimizer.zero_grad(set_to_none=True)
    r.loop.advance(skipped=not status.stepped, reason=status.reason)
    return status.norms.get("model", float("nan")), status.stepped
