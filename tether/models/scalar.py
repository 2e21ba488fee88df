"""Scalar scores from a 1-label sequence classifier (reward model), padding-proof, for decoders and encoders.

Decoder reward models (``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification``, … — anything with a
``score`` linear head) are run through their backbone with position ids from the attention mask, and the head is read
at the **last real token** of each row (the EOS; ppo_details.md C2), found from the mask, so left padding, right
padding or both give the same score. Hugging Face's own pooling searches for the pad id and is not used.

Encoder reward models (BERT-like, pooled ``[CLS]``) use the model's own pooled output; rows are first moved to right
padding, so ``[CLS]`` sits at column 0 and the model's default positions are right whatever the padding.

:func:`fold_score_affine` rewrites a model so that it outputs ``scale · score + shift`` (reward normalisation,
ppo_details.md C5) with no loading code needed afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tether.models.forward import position_ids_from_mask

log = logging.getLogger(__name__)

#: Config attribute holding a score offset for decoder models whose weights cannot absorb it (no bias in the head
#: nor in the final norm, e.g. Llama). ``sequence_scores`` adds it; a plain Hugging Face forward does not.
OFFSET_ATTR = "tether_score_offset"


def score_head(model: nn.Module) -> nn.Linear:
    """The 1-output linear head: ``model.score`` (decoders) or ``model.classifier`` (BERT-like encoders)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and not isinstance(head, nn.Linear):
            head = getattr(head, "out_proj", None)  # e.g. RobertaClassificationHead: dense → tanh → out_proj
        if isinstance(head, nn.Linear):
            if head.out_features != 1:
                raise ValueError(f"the reward head has {head.out_features} outputs; a reward model needs 1")
            return head
    raise ValueError(f"{type(model).__name__} has no linear score head (score / classifier)")


def is_decoder_scorer(model: nn.Module) -> bool:
    """True for a decoder reward model: Hugging Face's ``*ForSequenceClassification`` of causal architectures (GPT-2,
    Llama, Qwen, GPT-NeoX, OPT, …) all put a linear ``score`` head on every position; that attribute is the test.

    Encoders (BERT, RoBERTa, …) name their head ``classifier`` and pool ``[CLS]``; encoder–decoder models are refused.
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__}: encoder–decoder reward models are not supported")
    return isinstance(getattr(model, "score", None), nn.Linear)


def reward_input_style(model: nn.Module) -> str:
    """``"decoder"`` or ``"encoder"``: how :mod:`tether.data.preferences` should encode text for this model."""
    return "decoder" if is_decoder_scorer(model) else "encoder"


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Column of the last 1 in each row of the mask: (B, L) → (B,) long. Rows must have at least one 1."""
    mask = attention_mask.bool()
    length = mask.shape[1]
    cols = torch.arange(length, device=mask.device).expand_as(mask)
    return torch.where(mask, cols, torch.full_like(cols, -1)).max(dim=1).values


def _to_right_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's real tokens to the front (stable), pads to the back."""
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar score per row of a 1-label sequence classifier. Shapes: (B, L), (B, L) → (B,) float32.

    Decoders: backbone forward with ``position_ids = exclusive cumsum(mask)``, the head applied to the hidden state at
    the last position where ``attention_mask == 1`` (plus the model's stored offset, see :data:`OFFSET_ATTR`).
    Encoders: the model's own logits after moving pads to the right (no position ids passed, so RoBERTa-style
    pad-aware positions and models without a ``position_ids`` argument work). Either way the score does not depend
    on how many pads surround the row, nor on which side. Pure: no ``no_grad``, no mode change (the caller's job).
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(input_ids.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    if not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError("every row needs at least one real token (attention_mask all zero in some row)")
    if is_decoder_scorer(model):
        backbone = model.base_model
        out = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        idx = last_token_index(attention_mask)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, d)
        scores = model.score(last).squeeze(-1).float()
        offset = score_offset(model)
        return scores + offset if offset else scores
    ids, mask = _to_right_padding(input_ids, attention_mask)
    # right-padded now, so the model's default positions (0..n−1, or RoBERTa's pad-aware ones) are the right ones
    logits = model(input_ids=ids, attention_mask=mask).logits
    if logits.shape[-1] != 1:
        raise ValueError(f"a reward model needs 1 output label, this one has {logits.shape[-1]}")
    return logits[:, 0].float()


def _probe(model: nn.Module) -> Tensor:
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    return torch.arange(min(5, vocab), device=device).unsqueeze(0)


def _final_norm_with_bias(model: nn.Module, head: nn.Linear) -> nn.Module | None:
    """The module whose output is the backbone's last hidden state, if it has a bias vector (e.g. GPT-2 ``ln_f``)."""
    backbone = model.base_model
    d = head.in_features
    candidates = [
        m for m in backbone.modules()
        if isinstance(getattr(m, "bias", None), torch.Tensor) and m.bias.shape == (d,) and not isinstance(m, nn.Linear)
    ]
    if not candidates:
        return None
    outputs: dict[int, Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: outputs.__setitem__(i, out))
             for i, m in enumerate(candidates)]
    try:
        probe = _probe(model)
        with torch.no_grad():
            last = backbone(input_ids=probe, attention_mask=torch.ones_like(probe), use_cache=False)
        last = last.last_hidden_state if hasattr(last, "last_hidden_state") else last[0]
    except Exception:  # an unusual backbone: fall back to the config offset
        return None
    finally:
        for h in hooks:
            h.remove()
    for i in reversed(range(len(candidates))):
        out = outputs.get(i)
        if isinstance(out, torch.Tensor) and out.shape == last.shape and torch.equal(out, last):
            return candidates[i]
    return None


@torch.no_grad()
def fold_score_affine(model: nn.Module, scale: float = 1.0, shift: float = 0.0) -> str:
    """Rewrite ``model`` in place so that its score becomes ``scale · score + shift``; returns where the shift went.

    The scale always goes into the head's weight (and bias). The shift goes into the head's bias when it has one
    (BERT's ``classifier``) → ``"head.bias"``; else into the bias of the final norm feeding the head, along
    ``w/|w|²`` so that ``w·Δ = shift`` (GPT-2's ``ln_f``) → ``"<module>.bias"``; else (no bias anywhere, e.g. Llama)
    into the config attribute :data:`OFFSET_ATTR`, which :func:`sequence_scores` adds → ``"config"``. Every branch is
    checked on a probe input; the model is saved and reloaded with plain ``save_pretrained``/``from_pretrained``.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0 (a monotone map keeps pair accuracy), got {scale}")
    head = score_head(model)
    offset = score_offset(model)
    head.weight.mul_(scale)
    if offset:
        setattr(model.config, OFFSET_ATTR, offset * scale)
    if head.bias is not None:
        head.bias.mul_(scale).add_(shift)
        return "head.bias"
    if is_decoder_scorer(model) and shift != 0.0:
        norm = _final_norm_with_bias(model, head)
        w = head.weight[0].float()
        if norm is not None and float(w @ w) > 0:
            probe = _probe(model)
            before = sequence_scores(model, probe, torch.ones_like(probe))
            delta = (shift * w / (w @ w)).to(norm.bias.dtype)
            norm.bias.add_(delta)
            after = sequence_scores(model, probe, torch.ones_like(probe))
            if torch.allclose(after - before, torch.full_like(after, shift), atol=1e-4 * max(1.0, abs(shift))):
                name = next(n for n, m in model.named_modules() if m is norm)
                return f"{name}.bias"
            norm.bias.sub_(delta)
    new_offset = score_offset(model) + shift
    if new_offset or hasattr(model.config, OFFSET_ATTR):
        setattr(model.config, OFFSET_ATTR, new_offset)
    if new_offset:
        log.warning("reward model: %s has no bias in its score head or final norm, so the score offset %.6g is kept "
                    "in config.json (%s), which tether adds; plain transformers scores are tether's minus %.6g "
                    "(comparisons between completions are unchanged)", type(model).__name__, new_offset, OFFSET_ATTR,
                    new_offset)
    return "config"


def card_notes(stats: Mapping[str, Any] | None) -> list[str]:
    """Model-card lines saying where a reward model's normalisation lives (the ``normalize_reward_model`` statistics;
    None or empty: not normalised)."""
    if not stats:
        return ["The scores are not normalised (`normalize: none`)."]
    how = "s − μ" if stats.get("mode") == "shift" else "(s − μ)/σ"
    line = (f"Scores are normalised as {how} with μ = {stats['mean']:.6g}, σ = {stats['std']:.6g} over "
            f"{stats['n']} reference completions")
    if stats.get("folded_into") == "config":
        return [f"{line}; the scale is folded into the score head.",
                f"The shift ({stats['shift']:.6g}) cannot live in this architecture's weights (no bias in the score "
                f"head or the final norm): it is `{OFFSET_ATTR}` in config.json, which tether adds; plain "
                f"`AutoModelForSequenceClassification` scores are tether's minus that offset (comparisons between "
                "completions are unchanged)."]
    return [f"{line}, folded into the weights ({stats['folded_into']}): plain `AutoModelForSequenceClassification` "
            "gives the same scores as tether on the same token ids."]


def score_offset(model: Any) -> float:
    """The offset stored in the config by :func:`fold_score_affine` (0.0 when none)."""
    return float(getattr(getattr(model, "config", None), OFFSET_ATTR, 0.0) or 0.0)
