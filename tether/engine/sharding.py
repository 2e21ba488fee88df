"""Sharded data parallel (``sharding: fsdp``): the trained model's parameters, gradients and AdamW state split over
the processes with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``), one unit per transformer block plus the
root (embeddings, final norm, head).

What stays as in plain data parallel (tether.engine.dist): every process computes the statistics of the whole batch,
losses are divided by *global* counts and the gradients are **summed** over processes. FSDP reduce-scatters the
gradients itself during the backward, so :meth:`Dist.sum_gradients` leaves sharded parameters alone, and the
reduction's divide factor is set to 1 (a sum, not FSDP's default mean): N processes × B/N rows give the update of
1 process × B rows. ``clip_grad_norm_`` on the sharded gradients gives the global norm.

FSDP runs collectives inside every forward and backward, so every process must run the same forwards and backwards
in the same order: a process without rows in a micro-batch runs one row of it with weight 0
(:meth:`tether.algos.offline.OfflineRun.micro_batches`), and evaluations run on every process over the same data.

Files stay those of a one-process run: the main process writes the full (unsharded) weights and AdamW state,
gathered from the shards (a collective every process joins); a resume reads them on every process and each keeps
its shard. accelerate's own FSDP plugin is not used (tether never calls ``Accelerator.prepare``, and on the CPU
accelerate does not turn FSDP on at all); an ``accelerate launch`` FSDP or DeepSpeed config is refused in one line
(:func:`tether.engine.dist.check_launcher`) rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tether.console import note
from tether.engine.dist import Dist
from tether.errors import ConfigError


def plan(sharding: str, dist: Dist) -> bool:
    """Whether this run shards its trained model: ``sharding`` is ``fsdp`` and several processes run. One process
    has nothing to shard over: ``fsdp`` then trains as ``none`` (a note says so). Launcher configs tether does not
    read were refused by :func:`tether.engine.dist.setup`."""
    if sharding != "fsdp":
        return False
    if not dist.distributed:
        note("sharding=fsdp: one process, nothing to shard over; training unsharded")
        return False
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch >= 2.6)
    except ImportError:
        raise ConfigError(f"sharding=fsdp: needs torch >= 2.6 (FSDP2 fully_shard); this is torch "
                          f"{torch.__version__}") from None
    return True


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model: its modules whose class is in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard(model: nn.Module, root: nn.Module | None = None) -> nn.Module:
    """``fully_shard`` each transformer block, then the root, with gradients reduced as a sum (module docstring).
    The model must already be on its device; it is changed in place and returned.

    ``root``: the module whose forward the stage calls (default the model). A decoder reward model calls its
    backbone and then its score head (``tether.models.scalar.sequence_scores``), so there the root is the backbone:
    the head, outside it, and the root's own vectors (the final norm, where the score's shift is folded) stay
    whole on every process, their gradients summed by :meth:`Dist.sum_gradients` — a few thousand numbers."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    root = model if root is None else root
    blocks = _blocks(root)
    for block in blocks:
        fully_shard(block)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    ignored = ({p for p in root.parameters() if id(p) not in in_blocks and p.dim() == 1} if root is not model
               else None)
    fully_shard(root, ignored_params=ignored or None)
    for m in model.modules():
        if isinstance(m, FSDPModule):  # a plain SUM: no division, and no PREMUL_SUM (which gloo lacks)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model: Any) -> bool:
    """True for a model :func:`shard` has sharded (some of its modules are FSDP units)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, nn.Module) and any(isinstance(m, FSDPModule) for m in model.modules())


def _is_dtensor(t: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def clip_grad_norm(params: list[nn.Parameter], limit: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over a model with sharded (DTensor) and whole parameters: the global norm
    of all gradients (the sharded ones' norm is reduced over the processes), each gradient scaled by
    ``min(1, limit / (norm + 1e-6))`` as torch does. Returns the norm (NaN/Inf when a gradient is not finite)."""
    from torch.nn.utils import get_total_norm

    sharded = [p.grad for p in params if p.grad is not None and _is_dtensor(p.grad)]
    whole = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
    if not sharded or not whole:
        return float(torch.nn.utils.clip_grad_norm_(params, limit))
    norm_s = get_total_norm(sharded).full_tensor()
    norm_w = get_total_norm(whole)
    total = torch.sqrt(norm_s.to(norm_w) ** 2 + norm_w ** 2)
    coef = min(1.0, limit / (float(total) + 1e-6))
    if coef < 1.0:
        for g in [*sharded, *whole]:
            g.mul_(coef)
    return float(total)


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _tied(model: nn.Module) -> dict[str, str]:
    """Tied parameter names → the name their tensor is saved under (the first in sorted order, as safetensors'
    ``save_model`` keeps)."""
    by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    out: dict[str, str] = {}
    for names in by_param.values():
        keep = sorted(names)[0]
        out.update({n: keep for n in names if n != keep})
    return out


def full_weights(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state dict on the CPU on the main process (``{}`` on the others): a collective every
    process calls. Tied parameters appear under every name as one tensor, as in ``model.state_dict()`` (so
    ``save_pretrained`` writes the tied weight once, as it does for an unsharded model)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(cpu_offload=True))
    for name, keep in _tied(model).items():
        if keep in sd:
            sd[name] = sd[keep]
    return sd


def checkpoint_weights(model: nn.Module) -> dict[str, Tensor]:
    """:func:`full_weights` as a checkpoint file holds them: a tied tensor once, under the name ``save_model``
    keeps (a collective every process calls)."""
    sd = full_weights(model)
    tied = _tied(model)
    return {k: v.contiguous() for k, v in sd.items() if k not in tied}


def load_checkpoint_weights(model: nn.Module, sd: Mapping[str, Tensor]) -> None:
    """Load a full state dict (as :func:`checkpoint_weights` wrote it) into the sharded ``model``: each process
    keeps its shard. Every process passes the whole dict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    sd = dict(sd)
    for name, keep in _tied(model).items():
        if keep in sd:
            sd[name] = sd[keep]
    set_model_state_dict(model, sd, options=_options())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state (keyed by parameter name) on the main process, ``{}`` on the others: a
    collective every process calls."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load what :func:`optimizer_state` gave (every process passes the whole state; each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, dict(state), options=_options())
