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
