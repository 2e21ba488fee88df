"""Activation (gradient) checkpointing that takes effect: recompute each transformer block in the backward pass
instead of keeping its activations.

Why it used to be ignored: transformers checkpoints a block only when ``layer.gradient_checkpointing and
layer.training and torch.is_grad_enabled()`` (``GradientCheckpointingLayer`` in ``transformers/modeling_layers.py``).
tether loads every model in eval mode (dropout off, ``load_causal_lm``) and the PPO loop never leaves it, so turning
the flag on changed nothing. Checkpointing therefore needs (1) the flag, set with non-reentrant
``torch.utils.checkpoint`` (no ``requires_grad`` inputs needed, works with frozen embeddings and LoRA), and (2) train
mode during the forwards that build a graph — with every dropout at zero, so train mode computes exactly what eval
mode computes. Generation stays in eval mode: in train mode with the flag on, GPT-2 drops its KV cache even without
gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def _checkpointable(model: nn.Module) -> list[nn.Module]:
    """The outermost transformers models inside ``model`` (``model`` itself, a critic's trunk, a peft wrapper's
    base model) that support checkpointing."""
    found: list[nn.Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered:
            continue
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "config"):
            found.append(module)
            covered.update(id(m) for m in module.modules())
    return found


def enable_checkpointing(model: nn.Module) -> nn.Module:
    """Turn on non-reentrant checkpointing of every transformer block in ``model`` (a causal LM, a
    :class:`~tether.models.value.ValueModel`, a reward model, an adapted model). ``ValueError`` if nothing in it
    supports checkpointing. Takes effect only inside :func:`grad_forward` (or any train-mode forward)."""
    targets = _checkpointable(model)
    if not targets:
        raise ValueError(f"{type(model).__name__}: no transformers model inside supports gradient checkpointing")
    kwargs = {"use_reentrant": False}
    for m in targets:
        if hasattr(m, "activation_checkpointing_enable"):  # transformers ≥ 5.2x; the old name warns there
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # pragma: no cover - older transformers 5.x
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def checkpointing_enabled(model: nn.Module) -> bool:
    """Whether any block of ``model`` has the checkpointing flag on (it acts only in train mode)."""
    return any(getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_gradient_checkpointing_func")
               for m in model.modules())


def active_dropout(model: nn.Module) -> list[str]:
    """Names of the dropout modules of ``model`` whose probability is above zero."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]


@contextlib.contextmanager
def grad_forward(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode for the forwards that build a graph (what makes checkpointing act), restored afterwards.

    Refuses (``ValueError``) a model with an active dropout: train mode would then change the outputs, and PPO's
    ratio would no longer start at exactly 1 (disable dropout first, ``tether.models.load.disable_dropout``).
    """
    live = active_dropout(model)
    if live:
        raise ValueError(f"{type(model).__name__}: dropout is active in {live[0]}; disable dropout before training "
                         "forwards in train mode")
    was = model.training
    model.train()
    try:
        yield model
    finally:
        model.train(was)
