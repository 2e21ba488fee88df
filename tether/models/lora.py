"""LoRA adapters through peft: wrap a policy or a critic trunk, the adapter-off reference, save, merge, reload.

peft injects its LoRA layers into the transformers model in place, so the model object a trainer already holds keeps
its interface (``base_model``, ``get_output_embeddings``, the forward of :mod:`tether.models.forward`) and now trains
only the adapter. The peft wrapper (:class:`peft.PeftModel`) is what switches the adapter off, saves and merges it.

Because the adapter's B factor starts at zero, the adapted model computes exactly what the base model computes until
the first optimizer step (``W x + B A x`` with ``B = 0`` adds an exact zero), and with the adapter off it computes the
base model's outputs bit for bit at any time: the PPO reference is :class:`AdapterOffReference`, a view of the policy,
not a second copy of its weights.

An adapter run directory holds peft's ``adapter_config.json`` and ``adapter_model.safetensors`` (plus the embedding
matrix when the tokenizer gained tokens, e.g. a pad token, so the resized rows come back), the tokenizer, and, with
``merged=True``, ``merged/``: a plain ``save_pretrained`` causal LM of base + adapter that loads without peft.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tether.config.lora import LoraConfig
from tether.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_DIR = "merged"
ALL_LINEAR = "all-linear"
"""peft's shorthand for every ``nn.Linear`` / GPT-2 ``Conv1D`` of the model except the LM head (or a classifier
head): the default target set, which is every projection of the transformer blocks for each decoder family."""


def _peft_config(cfg: LoraConfig, causal_lm: bool, conv1d: bool):
    import peft

    return peft.LoraConfig(
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules) if cfg.target_modules is not None else ALL_LINEAR,
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM if causal_lm else None,
    )


def is_adapted(model: nn.Module) -> bool:
    """True if ``model`` is a peft wrapper or holds injected peft adapter layers."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _has_conv1d(model: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def _record_base_path(model: nn.Module) -> str | None:
    """The absolute directory the base model was loaded from, when it is a local ``save_pretrained`` directory."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if name and (Path(name) / "config.json").is_file():
        return str(Path(name).resolve())
    return None


def wrap_lora(model: nn.Module, cfg: LoraConfig):
    """Inject a LoRA adapter into ``model`` (a transformers causal LM or a bare trunk such as ``LlamaModel``), in
    place, and return the :class:`peft.PeftModel` around it.

    Afterwards only the adapter's factors require gradients; every base weight is frozen. ``model`` itself (also
    ``peft_model.get_base_model()``) now runs with the adapter on. The base directory, when ``model`` was loaded from a
    local one, is recorded as an absolute path in the adapter's config so :func:`load_adapter_run` finds it.
    Raises ``ModelError`` (one line) if ``model`` already carries an adapter or no module matches
    ``cfg.target_modules``.
    """
    import peft

    if is_adapted(model):
        raise ModelError(f"{type(model).__name__}: already carries a peft adapter; pass the base model")
    causal_lm = hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None
    try:
        wrapped = peft.get_peft_model(model, _peft_config(cfg, causal_lm, _has_conv1d(model)))
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ModelError(f"lora.target_modules: {str(err).splitlines()[0]}") from None
    base_path = _record_base_path(model)
    for pc in wrapped.peft_config.values():
        pc.base_model_name_or_path = base_path
    return wrapped


def wrap_critic_lora(critic: nn.Module, cfg: LoraConfig):
    """Give a critic (:class:`tether.models.value.ValueModel`) its own adapter on its own frozen trunk: the trunk is
    adapted in place (:func:`wrap_lora`) and the value head stays fully trainable. Returns the trunk's peft wrapper.
    Trainable parameters afterwards: the trunk's adapter and the head."""
    wrapped = wrap_lora(critic.trunk, cfg)
    critic.head.requires_grad_(True)
    return wrapped


def lora_target_names(model: nn.Module) -> set[str]:
    """Leaf names (``q_proj``, ``c_attn``…) of the modules that carry an adapter."""
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def adapter_disabled(peft_model) -> Iterator[None]:
    """Inside, the adapted model (the peft wrapper and the transformers model it holds alike) computes the base
    model's outputs exactly; the adapter is back on when the block ends, also on an exception."""
    with peft_model.disable_adapter():
        yield


class AdapterOffReference(nn.Module):
    """The frozen PPO reference as a view of the adapted policy: every forward runs the policy's model with its
    adapter switched off, i.e. the base weights the policy started from. It has no parameters of its own, so no
    second copy is held, ``.eval()``/``.train()``/``.requires_grad_()`` on it leave the policy as it is, and nothing
    of it is saved. Each forward runs in eval mode (and restores the policy's mode after), so a policy training in
    train mode still has a reference without dropout. Shapes and outputs are those of the wrapped model's forward."""

    def __init__(self, peft_model):
        super().__init__()
        object.__setattr__(self, "_peft", peft_model)  # not a submodule: its parameters are the policy's

    @property
    def config(self):
        return self._peft.get_base_model().config

    def get_input_embeddings(self) -> nn.Module:
        return self._peft.get_base_model().get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self._peft.get_base_model().get_output_embeddings()

    def forward(self, *args: Any, **kwargs: Any):
        base = self._peft.get_base_model()
        was_training = base.training
        base.eval()  # deterministic, as a frozen copy in eval mode: no dropout while the policy trains (DPO)
        try:
            with torch.no_grad(), adapter_disabled(self._peft):
                return base(*args, **kwargs)
        finally:
            base.train(was_training)


def adapter_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's weights (what a checkpoint of an adapter run needs to hold), keyed as peft saves them, with the
    embedding matrix when the tokenizer gained tokens (its new rows are random and must come back as they were)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, save_embedding_layers=_embeddings_resized(peft_model))
    return {k: v.detach().clone() for k, v in state.items()}


def load_adapter_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    """Put weights from :func:`adapter_state_dict` back; a key that does not fit raises ``ModelError``."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ModelError(f"adapter state: {len(unexpected)} keys do not belong to this adapter, e.g. {unexpected[0]}")


def _embeddings_resized(peft_model) -> bool:
    """Whether the input embeddings have more rows than the base checkpoint on disk (tokens were added): then the
    embedding matrix is saved with the adapter. Unknown base directory → True (saved, to be safe)."""
    base = next(iter(peft_model.peft_config.values())).base_model_name_or_path
    if not base or not (Path(base) / "config.json").is_file():
        return True
    try:
        vocab = json.loads((Path(base) / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError):
        return True
    rows = peft_model.get_base_model().get_input_embeddings().num_embeddings
    return not isinstance(vocab, int) or rows != vocab


def merged_copy(peft_model) -> nn.Module:
    """A plain transformers model equal to base + adapter (``W + (alpha/r)·B A`` in every adapted layer). The
    adapted model is left as it is (merging in place and unmerging after would not restore the base weights bit for
    bit, and the reference relies on them), so this holds one extra copy of the weights while it lives."""
    return copy.deepcopy(peft_model).merge_and_unload()


def save_adapter(peft_model, out_dir: str | Path, tokenizer: Any = None, *, merged: bool = False) -> Path:
    """Write the adapter (safetensors) and its config into ``out_dir`` (created), the tokenizer when given, and with
    ``merged`` also ``out_dir/merged/``: the merged model in ``save_pretrained`` format with the tokenizer. Not atomic
    by itself: a trainer writes into a temporary directory and swaps it in (``save_model_atomic``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=_embeddings_resized(peft_model))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if merged:
        full = merged_copy(peft_model)
        full.save_pretrained(str(out / MERGED_DIR))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out / MERGED_DIR))
        del full
    return out


def is_adapter_run(path: str | Path) -> bool:
    """True if ``path`` is an adapter run directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_path(run_dir: str | Path) -> Path:
    """The base model directory recorded in an adapter run's config; ``ModelError`` naming the file otherwise."""
    cfg_file = Path(run_dir) / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise ModelError(f"{cfg_file}: not found; {run_dir} is not an adapter run directory") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"{cfg_file}: cannot read the adapter config ({type(err).__name__})") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base:
        raise ModelError(f"{cfg_file}: records no base model directory (base_model_name_or_path); pass base=DIR")
    return Path(base)


def load_adapter_run(run_dir: str | Path, base: str | Path | None = None, *, trainable: bool = False,
                     trust_remote_code: bool = False):
    """Load an adapter run directory back: the base causal LM (``base``, default the directory recorded in the
    adapter's config) with the saved adapter on it, and the run's tokenizer (the base's if the run saved none).

    Returns ``(peft_model, tokenizer)``; ``peft_model.get_base_model()`` is the adapted transformers model, dropout
    off, eval mode. ``trainable`` leaves the adapter trainable (resuming training). Safetensors only; every failure is
    one ``ModelError`` line naming the path.
    """
    from peft import PeftModel

    from tether.models.load import load_causal_lm, load_tokenizer, resize_for_tokenizer

    run = Path(run_dir)
    base_dir = Path(base) if base is not None else adapter_base_path(run)
    if not (run / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{run}: no {ADAPTER_WEIGHTS} (adapters are read from safetensors only)")
    tokenizer = load_tokenizer(run if (run / "tokenizer_config.json").is_file() else base_dir, trust_remote_code)
    model = load_causal_lm(base_dir, trust_remote_code=trust_remote_code)
    resize_for_tokenizer(model, tokenizer)  # the saved embedding rows (if tokens were added) are loaded over these
    try:
        wrapped = PeftModel.from_pretrained(model, str(run), is_trainable=trainable, use_safetensors=True)
    except Exception as err:  # peft raises several types; the user needs one line
        raise ModelError(f"{run}: cannot load the adapter ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    wrapped.get_base_model().eval()
    return wrapped, tokenizer


class AdapterSave:
    """An adapter run as ``save_model_atomic`` saves a model: ``save_pretrained(dir)`` writes :func:`save_adapter`'s
    files (with ``merged/`` when ``merged``), ``named_parameters``/``named_buffers`` are the adapted model's (for the
    non-finite check), so the whole directory is still swapped in at once."""

    def __init__(self, peft_model, tokenizer: Any = None, *, merged: bool = False):
        self.peft_model, self.tokenizer, self.merged = peft_model, tokenizer, merged

    def named_parameters(self):
        return self.peft_model.named_parameters()

    def named_buffers(self):
        return self.peft_model.named_buffers()

    def save_pretrained(self, out_dir: str) -> None:
        save_adapter(self.peft_model, out_dir, self.tokenizer, merged=self.merged)
