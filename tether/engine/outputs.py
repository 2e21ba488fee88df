"""What a run writes besides checkpoints: the ``metrics.jsonl`` log and the final model directory, swapped in whole."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from tether.console import library_bars, warn
from tether.engine.checkpoint import check_finite, fsync_dir, kill_point


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
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) of model and tokenizer into a temporary directory beside ``out_dir``, then
    swap it in with ``os.replace``, so ``out_dir`` never holds a half-written model.

    ``extra_files``: name → text (written as is) or mapping (YAML for ``.yaml``/``.yml`` names, else JSON).
    ``keep``: files or directories of an existing ``out_dir`` carried into the new one unless the save writes them (by
    default the run's ``metrics.jsonl``; directories such as ``checkpoints`` are hard-linked, copied where links are
    not possible). ``before_swap``: called with the temporary directory once the model is in it, to add more (a
    critic). ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered by
    :func:`tether.engine.sharding.full_weights`). Weights holding NaN/Inf are refused (``TrainingError``). An existing ``out_dir`` is first renamed aside
    and removed once the new one is in place; a crash between those two renames is undone by
    :func:`recover_model_dir`. Returns ``out_dir`` as a Path.
    """
    check_finite({"model": model if state_dict is None else state_dict})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with library_bars():  # transformers' "Writing model shards" bar only on a terminal
            if state_dict is None:
                model.save_pretrained(str(tmp))
            else:
                model.save_pretrained(str(tmp), state_dict=dict(state_dict))
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
            warn(f"{out} restored from an interrupted save")
        shutil.rmtree(old, ignore_errors=True)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
