"""What the offline stages (SFT, RM) share around their loss: the run loop over a seeded epoch order, and the guarded
optimizer step (clip, NaN/Inf skip, schedule, counter)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from tether.console import note
from tether.engine.loop import EpochOrder, RunLoop, guarded_step
from tether.engine.optim import step_scheduler
from tether.engine.run_dir import RunDir


def offline_loop(run: RunDir, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 order: EpochOrder, total_steps: int) -> RunLoop:
    """The :class:`RunLoop` of an SFT or RM run: one model, one optimizer, the data order checkpointed with them.
    ``cfg`` needs ``checkpoint_every``, ``keep_checkpoints`` and ``max_consecutive_skips``."""
    return RunLoop(run, total=total_steps, models={"model": model}, optimizers={"model": optimizer},
                   schedulers={"model": scheduler}, stateful={"order": order},
                   checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                   max_consecutive_skips=cfg.max_consecutive_skips, skip_noun="optimizer step",
                   skip_phrase="skipped for a non-finite loss or gradient")


def offline_step(loop: RunLoop, optimizer: torch.optim.Optimizer, scheduler: Any, params: list[nn.Parameter],
                 max_grad_norm: Optional[float], finite_loss: bool) -> tuple[float, bool]:
    """Clip and step, or skip the step when the loss or the gradient norm is not finite; then advance the schedule
    and the step counter (a skipped step counts too). Returns ``(gradient norm, whether the optimizer stepped)``."""
    status = guarded_step({"model": params}, {"model": optimizer}, max_grad_norm, finite_loss)
    if not status.stepped:
        what = "loss" if status.reason == "non-finite loss" else "gradient"
        note(f"step {loop.step + 1}: non-finite {what}, optimizer step skipped")
    step_scheduler(scheduler)
    optimizer.zero_grad(set_to_none=True)
    loop.advance(skipped=not status.stepped, reason=status.reason)
    return status.norms.get("model", float("nan")), status.stepped
