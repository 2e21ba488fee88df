"""Where a stage runs: the device, and the processes of a data-parallel run (``torchrun`` / ``accelerate launch``).

:func:`setup` is the one place that turns a stage's ``device`` option into a :class:`Dist`: the torch device every
model, tensor and generator of the stage goes to, this process's rank and the number of processes, and the few
collectives the stages need (sums of gradients and statistics, "does any rank want to stop", the RNG state of every
rank for a checkpoint). One process (no ``WORLD_SIZE`` > 1 in the environment) needs no process group: the
collectives are identities. Several processes get their process group from accelerate's ``Accelerator`` (gloo on
CPU, NCCL on CUDA), built once per process here; sharding the trained model over them (``sharding: fsdp``) is
tether.engine.sharding.

The data-parallel rule of the offline stages: every process computes the same global batch statistics it would on one
process. Losses are divided by the *global* count (tokens, pairs) and gradients are **summed** over processes once per
optimizer step (:meth:`Dist.sum_gradients`), so N processes × B/N rows give the update of 1 process × B rows up to
float reduction order, and a process with fewer (or no) rows in a step needs no filler batch.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from tether.config.base import _device
import functools

from tether.errors import ConfigError, TrainingError



def check_device_name(value: str) -> str:
    """The spelling of a ``device`` option, checked as the config does (``ConfigError`` otherwise)."""
    try:
        return _device(value)
    except ValueError as err:
        raise ConfigError(f"device={value}: {err}") from None


def world_size_from_env() -> int:
    """Processes of this run as the launcher (``torchrun``, ``accelerate launch``) told it: ``WORLD_SIZE`` or 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _cuda_missing(name: str) -> ConfigError:
    why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
    return ConfigError(f"device={name}: CUDA is not available on this machine ({why}); use device=cpu or auto")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` when a CUDA GPU is visible, else ``cpu``; ``cuda``/``cuda:N`` refused in one line
    (``ConfigError``) when there is no such GPU. The single-process device of a stage."""
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _cuda_missing(name)
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return dev
    return torch.device("cpu")


_ACCELERATOR: Any = None


def _accelerator(cpu: bool) -> Any:
    """The process's one ``accelerate.Accelerator`` (built on first use; its process group lives as long as the
    process). ``TETHER_DIST_TIMEOUT_S`` (default 600): how long a collective waits for a rank that does not come
    before the run fails instead of hanging."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        timeout = datetime.timedelta(seconds=float(os.environ.get("TETHER_DIST_TIMEOUT_S", "600")))
        _ACCELERATOR = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    return _ACCELERATOR


def _collective(fn):
    """A collective of :class:`Dist`: a peer that died (its connection closed) or never came within the process
    group's timeout becomes one line, ``TrainingError``, instead of a backend traceback."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if not self.distributed:
            return fn(self, *args, **kwargs)
        try:
            return fn(self, *args, **kwargs)
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise TrainingError(f"process {self.rank} of {self.world_size}: another process of this run failed or "
                                f"stopped answering (its own message says why; {first})") from None

    return wrapper


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor has no FSDP2 either
        return False
    return isinstance(t, DTensor)


@dataclass
class Dist:
    """The device and the processes of a run (module docstring). ``accelerator``: accelerate's ``Accelerator`` when
    several processes run, else None."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ the share of each batch
    def share(self, rows: Sequence[int]) -> list[int]:
        """This rank's contiguous share of ``rows`` (sizes differ by at most one; a rank may get none)."""
        lo, hi = self.share_range(len(rows))
        return list(rows[lo:hi])

    def share_range(self, n: int) -> tuple[int, int]:
        """``(first, end)``: the positions of this rank's share (:meth:`share`) of ``n`` rows."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    # ------------------------------------------------------------------ collectives
    @_collective
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks of a few numbers (float64 on the way, so counts stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return [float(x) for x in self.accelerator.reduce(t, reduction="sum").cpu()]

    @_collective
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (the agreement on stops and skips)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        return bool(self.accelerator.reduce(t, reduction="max").item() > 0)

    @_collective
    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over ranks of a few numbers."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return [float(x) for x in self.accelerator.reduce(t, reduction="max").cpu()]

    def moments(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
        """Mean and biased variance of ``values`` over the True entries of ``mask`` on *all* ranks (two passes:
        the mean, then the squared deviations from it, summed in float64)."""
        m = mask.bool()
        x = values.detach().double()
        total, count = self.sum([float(x[m].sum()), float(m.sum())])
        if not count > 0:
            raise ValueError("no valid entry to whiten over, on any process")
        mean = total / count
        (sq,) = self.sum([float(((x - mean)[m] ** 2).sum())])
        return mean, sq / count

    def whiten(self, values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
        """``ops.masked_whiten`` with the moments of the whole batch over all ranks (the rank's own on one)."""
        from tether.ops.masking import masked_whiten

        if not self.distributed:
            return masked_whiten(values, mask, shift_mean)
        return masked_whiten(values, mask, shift_mean, moments=self.moments(values, mask))

    @_collective
    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in place, in one flat all-reduce per dtype. A parameter with
        a gradient on some rank gets a zero one where it has none (a rank without rows this step still takes
        part); one without a gradient on every rank keeps none, as on one process. Called once per optimizer
        step, with the same parameter list on every rank. Parameters sharded by FSDP (``sharding: fsdp``; DTensors)
        are left alone: FSDP has already summed their gradients in the backward (tether.engine.sharding)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad and not _is_dtensor(p)]
        if not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=self.device)
        has = self.accelerator.reduce(has, reduction="max")
        params = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    @_collective
    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank (small objects: RNG states)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    @_collective
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @_collective
    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launcher(stage_shards: bool = True) -> None:
    """Refuse in one line (``ConfigError``) an ``accelerate launch`` config that asks for DeepSpeed or FSDP
    (``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP`` in the environment): tether does not read them (it
    would silently train unsharded), it reads its own ``sharding`` option. ``stage_shards``: the stage has that
    option (SFT, reward model); PPO has not."""
    if _truthy("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("accelerate config: DeepSpeed is not supported by tether; launch with "
                          "configs/accelerate/ddp.yaml (or fsdp.yaml with sharding=fsdp for SFT and the reward model)")
    if _truthy("ACCELERATE_USE_FSDP"):
        how = ("set sharding=fsdp and launch with configs/accelerate/fsdp.yaml" if stage_shards else
               "PPO does not shard yet; launch with configs/accelerate/ddp.yaml")
        raise ConfigError(f"accelerate config: distributed_type FSDP is not read by tether; {how}")


def setup(device: str = "auto", *, shards: bool = False) -> Dist:
    """The :class:`Dist` of a stage whose ``device`` option is ``device``. Under a launcher with ``WORLD_SIZE`` > 1
    the Accelerator is built (once per process) and each process gets its local GPU (``auto``/``cuda``; an explicit
    ``cuda:N`` is refused, the launcher assigns them) or the CPU (``cpu``, or ``auto`` without CUDA). An
    accelerate FSDP/DeepSpeed config is refused first (:func:`check_launcher`; ``shards``: the stage has a
    ``sharding`` option)."""
    check_launcher(stage_shards=shards)
    name = check_device_name(device)
    world = world_size_from_env()
    if world == 1:
        return Dist(resolve_device(name))
    if re.match(r"^cuda:\d+$", name):
        raise ConfigError(f"device={name}: with {world} processes each one takes its own GPU (LOCAL_RANK); use "
                          "device=cuda or auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise _cuda_missing(name)
    cpu = name == "cpu" or not torch.cuda.is_available()
    acc = _accelerator(cpu)
    if (torch.device(acc.device).type == "cpu") != cpu:  # an earlier stage of this command built the group
        raise ConfigError(f"device={name}: this process already runs on {torch.device(acc.device).type} (an earlier "
                          "stage's device; one launch has one process group); give every stage the same device")
    return Dist(torch.device(acc.device), rank=acc.process_index, world_size=acc.num_processes, accelerator=acc)


LOCAL = Dist(torch.device("cpu"))
"""One process on the CPU: what code that was handed no :class:`Dist` runs as."""


def current(dist: Optional[Dist]) -> Dist:
    return LOCAL if dist is None else dist
