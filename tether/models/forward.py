"""The one forward helper every stage uses: positions from the attention mask, pads never embedded."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Exclusive cumsum of the mask: ``cumsum(mask) − mask``, so the first real token is position 0 whatever the
    left padding (ppo_details.md A3). Shapes: (B, L) → (B, L) long."""
    m = attention_mask.long()
    return (m.cumsum(1) - m).clamp(min=0)


def causal_lm_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, **kwargs) -> Tensor:
    """Logits of a causal LM for left- or right-padded ``input_ids``. Shapes: (B, L) → (B, L, V)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    return out.logits


def causal_lm_logits_and_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and last hidden state from one trunk pass, ``logits = output_embeddings(trunk(x))``: what a value head
    on the policy's own trunk reads (``critic_mode=shared``). Shapes: (B, L) → (B, L, V), (B, L, d).

    Equal to :func:`causal_lm_logits` for models whose LM head is a plain projection of the last hidden state
    (Llama, GPT-2, Qwen, Mistral, SmolLM…); :func:`check_shared_trunk` verifies that before training.
    """
    hidden = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return model.get_output_embeddings()(hidden), hidden


@torch.no_grad()
def check_shared_trunk(model: nn.Module, probe: Tensor) -> None:
    """Raise ``ValueError`` unless :func:`causal_lm_logits_and_hidden` reproduces the model's own logits on ``probe``
    (B, L) — false for heads that scale or soft-cap logits after the projection."""
    mask = torch.ones_like(probe)
    want = causal_lm_logits(model, probe, mask)
    got, _ = causal_lm_logits_and_hidden(model, probe, mask)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        raise ValueError(f"critic_mode=shared: {type(model).__name__}'s logits are not its output projection of the "
                         "last hidden state; use critic_mode=separate")
