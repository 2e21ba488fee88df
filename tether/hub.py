"""The local Hugging Face cache: where a Hub name (``org/name``) already lives on this machine. Nothing is downloaded
here, so ``HF_HUB_OFFLINE`` is honoured whatever its value; a name that is not cached is the caller's one-line error,
with the download command (:func:`download_command`)."""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache_dir() -> str:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default
    (``~/.cache/huggingface/hub``); read when called, so a changed environment is honoured."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_snapshot(repo_id: str, repo_type: str = "model") -> Path | None:
    """The local snapshot directory of a Hub repository (``repo_type`` ``"model"`` or ``"dataset"``), or None when it
    is not in the cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True, cache_dir=hub_cache_dir()))
    except Exception:  # LocalEntryNotFoundError, a malformed name, a broken cache entry
        return None


def download_command(repo_id: str, repo_type: str = "model") -> str:
    """The command that puts ``repo_id`` into the cache: the ``hf`` CLI of huggingface_hub ≥ 0.34."""
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return f"hf download{kind} {repo_id}"
