"""Pieces every training loop shares: optimizer, LR schedule, seeding, metrics log, atomic model save, progress."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy (when installed) and torch (CPU and every CUDA device)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)


def build_optimizer(
    params: Iterable[nn.Parameter] | nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on matrices (≥ 2 dims), never on biases, norms or
    1-d gains. ``eps`` defaults to 1e-5 (N+, ppo_details.md J1). ``params``: a module or an iterable of parameters."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(params, nn.Module):
        params = params.parameters()
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters to optimise")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def lr_factor(step: int, kind: ScheduleKind, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based: the factor used *by* update ``step + 1``).

    Warm-up: ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``. After it, with
    ``p = (step − warmup_steps) / (total_steps − warmup_steps)``: constant 1, linear ``1 − p``, cosine
    ``½(1 + cos πp)``. Linear with no warm-up is N+'s PPO anneal ``lr·(1 − (u−1)/U)`` for update ``u = step + 1``
    (ppo_details.md J2); the factor is in (0, 1] for every step < ``total_steps``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return max(0.0, 1.0 - p)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: ScheduleKind, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with :func:`lr_factor`; call ``scheduler.step()`` once after each ``optimizer.step()``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps ≥ 0 and total_steps ≥ 1, got {warmup_steps} and {total_steps}")
    lr_factor(0, kind, warmup_steps, total_steps)  # validates kind
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, kind, warmup_steps, total_steps)
    )


def step_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()``, without torch's warning when the optimizer has not stepped yet (every step so far was
    skipped for NaN/Inf): the schedule follows the step count, taken or skipped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def _plain(value: Any) -> Any:
    """JSON-able version of a metric value: tensors and NumPy scalars → numbers, non-finite floats → None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class MetricsWriter:
    """Append one JSON object per line to ``path`` (``metrics.jsonl``), flushed at every write.

    The file is started afresh when the writer is made (``overwrite=True``) or appended to (``overwrite=False``, for
    a resumed run). Tensors become numbers and NaN/inf become ``null``, so every line is strict JSON.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite or not self.path.exists():
            self.path.write_text("", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record``; returns the JSON-able dict that was written."""
        plain = {str(k): _plain(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(plain, allow_nan=False) + "\n")
        return plain

    def close(self) -> None:
        """Nothing to release (the file is opened per write); kept for symmetry with other sinks."""

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_extra(directory: Path, name: str, content: str | Mapping[str, Any]) -> None:
    target = directory / name
    if target.resolve().parent != directory.resolve() and directory.resolve() not in target.resolve().parents:
        raise ValueError(f"extra file {name!r} would be written outside the model directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        text = content
    elif name.endswith((".yaml", ".yml")):
        text = yaml.safe_dump(_plain(dict(content)), sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(_plain(dict(content)), indent=2, allow_nan=False) + "\n"
    target.write_text(text, encoding="utf-8")


def save_model_atomic(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    extra_files: Mapping[str, str | Mapping[str, Any]] | None = None,
    *,
    keep: Sequence[str] = ("metrics.jsonl",),
    before_swap: Callable[[Path], None] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) of model and tokenizer into a temporary directory beside ``out_dir``, then
    swap it in with ``os.replace``, so ``out_dir`` never holds a half-written model.

    ``extra_files``: name → text (written as is) or mapping (YAML for ``.yaml``/``.yml`` names, else JSON).
    ``keep``: files or directories of an existing ``out_dir`` carried into the new one unless the save writes them (by
    default the run's ``metrics.jsonl``; directories such as ``checkpoints`` are hard-linked, copied where links are
    not possible). ``before_swap``: called with the temporary directory once the model is in it, to add more (a
    critic). Weights holding NaN/Inf are refused (``TrainingError``). An existing ``out_dir`` is first renamed aside
    and removed once the new one is in place; a crash between those two renames is undone by
    :func:`recover_model_dir`. Returns ``out_dir`` as a Path.
    """
    from tether.checkpoint import check_finite, fsync_dir, kill_point

    check_finite({"model": model})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from tether.monitor.progress import library_bars

        with library_bars():  # transformers' "Writing model shards" bar only on a terminal
            model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if before_swap is not None:
            before_swap(tmp)
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content)
        for name in keep:
            if (tmp / name).exists():
                continue
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / name)
            elif (out / name).is_dir():
                _link_tree(out / name, tmp / name)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            kill_point(f"model-swap:{out.name}")  # the old directory aside, the new one not yet in place
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def recover_model_dir(out_dir: str | Path) -> None:
    """Undo what a crash inside :func:`save_model_atomic` left beside ``out_dir``: put the previous directory back
    when the crash fell between the two renames, and delete temporary directories."""
    out = Path(out_dir)
    if not out.parent.is_dir():
        return
    olds = sorted(out.parent.glob(f".{out.name}.old-*"))
    for old in olds:
        if not out.exists() and (old / "x").is_dir():
            os.replace(old / "x", out)
            print(f"tether: warning: {out} restored from an interrupted save", file=sys.stderr, flush=True)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def progress_bar(total: int, enabled: bool = True, desc: str | None = None):
    """A tqdm bar on stderr when ``enabled`` and stderr is a terminal; a silent stand-in otherwise."""
    from tether.monitor.progress import progress

    return progress(total=total, desc=desc, enabled=enabled)


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` → the torch dtype."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(table)}")
    return table[name]


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``round(fraction·n)`` records (at least 1 when fraction > 0 and n ≥ 2).
    Returns (train, eval) in the original order within each part."""
    n = len(records)
    if fraction <= 0 or n < 2:
        return list(records), []
    k = min(n - 1, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def grad_norm(params: Iterable[nn.Parameter]) -> float:
    """Global L2 norm of the gradients (0.0 when none)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
