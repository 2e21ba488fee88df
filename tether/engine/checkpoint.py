"""Training checkpoints on disk: written whole or not at all, verified before use. No training logic lives here.

A checkpoint is one directory ``<root>/<unit>-<NNNNNN>`` (``update-000005``, ``step-000120``) holding

- ``<model>.safetensors`` — the weights of each trained model (safetensors: loading cannot run code);
- ``state.pt`` — optimizer, scheduler, RNG and loop state as plain tensors, numbers, strings, lists and dicts, so
  ``torch.load(weights_only=True)`` reads it;
- copies of the run's logs as of this checkpoint (``metrics.jsonl``, ``samples.jsonl``);
- ``meta.json`` — written last: the format version, the step, the resolved config, and the size and SHA-256 of every
  other file.

Writing: every file goes into a temporary directory ``<root>/.tmp-<name>-*`` and is fsynced; the directory is fsynced
and renamed to its final name; ``<root>/latest`` (the newest checkpoint's name) is then replaced atomically. A crash at
any moment leaves either the complete checkpoint or a temporary directory that is ignored and later removed.
Reading (:func:`open_checkpoint`) checks the format version and every file's size and hash, so a truncated or corrupt
checkpoint is refused with one line instead of being half-loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tether.errors import CheckpointError, TrainingError

FORMAT_VERSION = 1
META = "meta.json"
STATE = "state.pt"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^([a-z]+)-(\d+)$")


# ---------------------------------------------------------------------------------------------- durable writes


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename or a new file in it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a synced temporary file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process here when the environment variable ``TETHER_TEST_KILL_AT`` equals ``name``.

    The crash-safety tests use it to die at exact places (half-way through a checkpoint write, between two renames)."""
    if os.environ.get("TETHER_TEST_KILL_AT") == name:  # pragma: no cover - the process ends here
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- RNG and weights


def rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator and torch (CPU and CUDA) as tensors and numbers."""
    import numpy as np

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(models: Mapping[str, nn.Module | Mapping[str, torch.Tensor]]) -> None:
    """Raise ``TrainingError`` naming the first parameter or buffer holding NaN/Inf: such weights are never saved.
    A model is a module or its state dict (the gathered weights of a sharded model)."""
    for what, model in models.items():
        named = (list(model.items()) if isinstance(model, Mapping)
                 else [*model.named_parameters(), *model.named_buffers()])
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingError(f"refusing to save non-finite weights ({what} {name} holds NaN/Inf)")


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_name(unit: str, step: int) -> str:
    """``update-000005``: the unit counted (``update`` or ``step``) and the number done, zero-padded so names sort."""
    return f"{unit}-{step:06d}"


def step_of(path: str | Path) -> int | None:
    """The step number in a checkpoint directory's name, or None for a name that is not a checkpoint's."""
    m = _NAME.match(Path(path).name)
    return int(m.group(2)) if m else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root``, newest (highest step) first; temporaries and other names are left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p), reverse=True)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint directory (made by :func:`open_checkpoint`)."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def load_model(self, name: str, model: nn.Module) -> None:
        """Copy the saved weights ``<name>.safetensors`` into ``model`` (every tensor must match by name and shape)."""
        from safetensors.torch import load_file, load_model

        from tether.engine.sharding import is_sharded, load_checkpoint_weights

        file = self.path / f"{name}.safetensors"
        try:
            if is_sharded(model):  # every process reads the whole file and keeps its shard
                load_checkpoint_weights(model, load_file(str(file)))
            else:
                load_model(model, str(file), strict=True, device=str(next(model.parameters()).device))
        except Exception as err:  # shape or name mismatch: another model than the one that was saved
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{file}: does not fit the {name} being trained ({first[:200]})") from None

    def load_state(self) -> dict[str, Any]:
        """``state.pt`` through ``torch.load(weights_only=True)``: tensors and plain containers only, no code."""
        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{self.path / STATE}: cannot be read ({type(err).__name__})") from None

    def read_bytes(self, name: str) -> bytes | None:
        """A copied log file as saved, or None when the checkpoint has none of that name."""
        file = self.path / name
        return file.read_bytes() if name in self.meta.get("files", {}) and file.is_file() else None


def write_checkpoint(
    root: str | Path,
    name: str,
    *,
    models: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    files: Mapping[str, bytes],
    meta: Mapping[str, Any],
) -> Path:
    """Write checkpoint ``root/name`` atomically (module docstring) and point ``root/latest`` at it.

    ``models``: name → module, or its state dict as :func:`tether.engine.sharding.checkpoint_weights` gathers it
    from a sharded model, each saved as ``<name>.safetensors`` (non-finite weights are refused first);
    ``state``: saved with ``torch.save`` (keep it to tensors and plain containers); ``files``: extra files by name
    (log copies); ``meta``: JSON-able fields stored in ``meta.json`` next to the format version and the file list.
    An existing checkpoint of the same name is replaced. Returns the checkpoint's path.
    """
    from safetensors.torch import save_file, save_model

    check_finite(models)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=root))
    target = root / name
    try:
        for key, model in models.items():
            file = tmp / f"{key}.safetensors"
            if isinstance(model, Mapping):  # a sharded model's gathered weights
                save_file(dict(model), str(file), metadata={"format": "pt"})
            else:
                save_model(model, str(file))
            _fsync_file(file)
            kill_point(f"checkpoint-write:{name}")  # a half-written checkpoint: weights there, no state or meta yet
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        _write_synced(tmp / STATE, buf.getvalue())
        for fname, data in files.items():
            _write_synced(tmp / fname, data)
        listing = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
        record = {"format_version": FORMAT_VERSION, **meta, "files": listing}
        _write_synced(tmp / META, (json.dumps(record, indent=1, allow_nan=False) + "\n").encode("utf-8"))
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{name}-", dir=root))
            os.replace(target, old / name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point(f"checkpoint-renamed:{name}")  # complete, but `latest` still names the one before
    atomic_write_text(root / LATEST, name + "\n")
    return target


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Verify a checkpoint directory: ``meta.json`` readable, this format version, every file present with its
    recorded size and SHA-256. Raises ``CheckpointError`` with one line naming the directory and the fault."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found")
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {META})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{meta_file}: not valid JSON (corrupt checkpoint)") from None
    if not isinstance(meta, dict) or "step" not in meta or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{meta_file}: not a tether checkpoint description")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this tether reads version "
                              f"{FORMAT_VERSION}")
    for fname, rec in meta["files"].items():
        file = path / fname
        if not file.is_file():
            raise CheckpointError(f"{path}: {fname} is missing (corrupt checkpoint)")
        size = file.stat().st_size
        if size != rec.get("bytes"):
            raise CheckpointError(f"{path}: {fname} has {size} bytes, {rec.get('bytes')} were written (truncated or "
                                  "corrupt checkpoint)")
        if sha256_file(file) != rec.get("sha256"):
            raise CheckpointError(f"{path}: {fname} does not match its checksum (corrupt checkpoint)")
    return Checkpoint(path, meta)


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """``meta.json`` of a checkpoint without verifying its files (cheap); None when absent or unreadable."""
    try:
        meta = json.loads((Path(path) / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def remove_temporaries(root: str | Path) -> None:
    """Delete what interrupted writes left under ``root`` (``.tmp-*`` directories and files)."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name.startswith(f".{LATEST}.tmp-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prune(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints under ``root``; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    doomed = list_checkpoints(root)[keep:]
    for p in doomed:
        discard(p)
    return doomed


def discard(path: str | Path) -> None:
    """Remove a checkpoint directory: renamed to a temporary name first, so a crash half-way through the deletion
    never leaves a damaged directory under a checkpoint's name."""
    path = Path(path)
    aside = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}del-{path.name}-", dir=path.parent))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)
