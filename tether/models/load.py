"""Load tokenizers and models from local directories safely (safetensors, no remote code unless asked)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from tether.errors import ModelError
from tether.console import library_bars

PAD_TOKEN = "<|pad|>"


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _pickle_only(p: Path) -> list[str]:
    """Names of pickle weight files in a directory that has no safetensors weights (empty otherwise)."""
    if any(p.glob("*.safetensors")):
        return []
    return sorted(f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth") and f.is_file()
                  and ("model" in f.name or f.name.startswith("pytorch")))


def resolve_model(path: str | Path, what: str = "model") -> Path:
    """The local directory of a model: ``path`` itself, or — for a Hub name ``org/name`` that is not a directory here
    — its snapshot in the local Hugging Face cache (``HF_HUB_CACHE``; never downloaded, so ``HF_HUB_OFFLINE`` holds
    whatever its value). One-line ``ModelError`` when it is missing (with the download command for a Hub name), is
    not a ``save_pretrained`` directory, or holds only pickle weights (``.bin``: tether loads safetensors only, and
    the message says how to convert)."""
    p = Path(path)
    if not p.exists() and _REPO_ID.match(str(path)) and not p.parent.exists():  # not a mistyped local path
        from tether.hub import cached_snapshot, download_command, hub_cache_dir

        snap = cached_snapshot(str(path), "model")
        if snap is None:
            raise ModelError(f"{path}: no such {what} directory, and no model of that name in the local Hugging Face "
                             f"cache ({hub_cache_dir()}); download it first: {download_command(str(path))}")
        p = snap
    if not p.exists():
        raise ModelError(f"{p}: {what} directory not found")
    if what == "tokenizer":
        return p
    if not (p / "config.json").is_file():
        raise ModelError(f"{p}: not a save_pretrained {what} directory (no config.json)")
    pickles = _pickle_only(p)
    if pickles:
        loader = ("AutoModelForSequenceClassification" if "reward" in what or what.startswith("rm")
                  else "AutoModelForCausalLM")
        raise ModelError(f"{path}: only pickle weights ({pickles[0]}), which tether does not load; convert them to "
                         f"safetensors once: python -c \"from transformers import {loader} as M; "
                         f"M.from_pretrained('{p}').save_pretrained('{p}-safetensors')\" and use that directory")
    return p


def _check_dir(path: str | Path, what: str) -> Path:
    return resolve_model(path, what)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """``AutoTokenizer`` from a local directory; one-line ``ModelError`` if it cannot be read."""
    from transformers import AutoTokenizer

    p = _check_dir(path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types; the user needs one line
        raise ModelError(f"{p}: cannot load tokenizer ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def ensure_pad_token(tokenizer, pad_policy: str = "add") -> bool:
    """Make sure the tokenizer has a pad token different from EOS.

    ``pad_policy="add"`` adds ``<|pad|>`` when the pad token is missing or equals EOS (then the model's embeddings
    must be resized with ``resize_for_tokenizer``); ``"refuse"`` raises instead. Returns True if a token was added.
    Reference: ppo_details.md A1 (pad == EOS masks every real EOS).
    """
    if tokenizer.eos_token_id is None:
        raise ModelError("tokenizer has no EOS token: set one (tokenizer.eos_token) before training")
    ok = tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    if ok:
        return False
    if pad_policy == "refuse":
        why = "has no pad token" if tokenizer.pad_token_id is None else "uses EOS as its pad token"
        raise ModelError(f"tokenizer {why}; add a distinct pad token or set pad_policy=add")
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def resize_for_tokenizer(model: nn.Module, tokenizer, what: str = "model") -> None:
    """Grow the input (and tied output) embeddings so every token id of ``tokenizer`` has a row.

    Only tokens added to the tokenizer (a pad token) get new rows: a base vocabulary larger than the model's
    embeddings means the model was not trained with this tokenizer, and a one-line ``ModelError`` says so.
    """
    n = model.get_input_embeddings().num_embeddings
    if n >= len(tokenizer):
        return
    base = getattr(tokenizer, "vocab_size", None)
    if isinstance(base, int) and base > n:
        raise ModelError(f"{what}: tokenizer has {base} tokens but the model embeds only {n}; "
                         "they do not belong together")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0, modules and config fields alike (ppo_details.md E4)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout", "dropout_p", "attn_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for key, value in list(vars(cfg).items()):
            if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float):
                setattr(cfg, key, 0.0)
    return model


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """A causal LM from a local ``save_pretrained`` directory (safetensors only), dropout off, eval mode."""
    from transformers import AutoModelForCausalLM

    p = _check_dir(path, "model")
    try:
        with library_bars():  # transformers' "Loading weights" bar only on a terminal
            model = AutoModelForCausalLM.from_pretrained(
                str(p), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except Exception as err:
        raise ModelError(f"{p}: cannot load causal LM ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return disable_dropout(model).eval()


HEAD_PREFIXES = ("score.", "classifier.")
"""Weight-name prefixes of a sequence classifier's head: ``score`` (decoders), ``classifier`` (BERT-like encoders)."""


def load_sequence_classifier(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                             *, require_head: bool = True):
    """A 1-label sequence classifier (reward model) from a local directory, dropout off, eval mode.

    ``require_head`` (scoring: PPO rewards, ``tether doctor``, ``tether eval``): refuse, in one line, a checkpoint
    that holds no trained head — a causal LM such as an SFT output, or a bare encoder — which transformers would give a
    random head that scores noise. Training a reward model starts from such a backbone legitimately
    (:func:`tether.algos.rm.load_reward_backbone`).
    """
    from transformers import AutoModelForSequenceClassification

    p = _check_dir(path, "reward model")
    try:
        with library_bars():  # transformers' "Loading weights" bar only on a terminal
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(p), num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
                output_loading_info=True,
            )
    except Exception as err:
        raise ModelError(f"{p}: cannot load reward model ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if model.config.num_labels != 1:
        raise ModelError(f"{p}: a reward model needs exactly 1 output label, found {model.config.num_labels}")
    missing = sorted(str(k) for k in (info.get("missing_keys") or ()) if str(k).startswith(HEAD_PREFIXES))
    if require_head and missing:
        archs = ", ".join(getattr(model.config, "architectures", None) or []) or "unknown architecture"
        raise ModelError(f"{p}: not a trained reward model: the checkpoint ({archs}) has no score head ({missing[0]} "
                         f"is missing), so it would score with a random head; train one with `tether rm model={p}` "
                         "or give a reward function")
    return disable_dropout(model).eval()


def init_score_head(linear: nn.Linear) -> None:
    """Reward/value head init: weight ~ N(0, 1/sqrt(d+1)), bias 0 (ppo_details.md C1)."""
    nn.init.normal_(linear.weight, std=1.0 / math.sqrt(linear.in_features + 1))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def vocab_check(model: nn.Module, tokenizer, what: str = "model") -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding matrix."""
    n = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n:
        raise ModelError(
            f"{what}: tokenizer has {len(tokenizer)} tokens but the model embeds only {n}; "
            "they do not belong together"
        )
