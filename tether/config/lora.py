"""``LoraConfig``: a LoRA adapter's options (through peft), one section a stage embeds (e.g. ``policy_lora``).

With an adapter, only the low-rank factors (and a value head) train; the base weights stay frozen, so gradients and
AdamW state shrink to the adapter's size, and the PPO reference is the same model with the adapter switched off
(:mod:`tether.models.lora`) instead of a second copy.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from tether.config.base import Section


class LoraConfig(Section):
    """A LoRA adapter (Hu et al. 2021) through peft: ``W x + (alpha / r) · B A x``, B initialised to zero."""

    r: int = Field(16, ge=1)
    """Rank of the adapter's factors A (r × in) and B (out × r)."""
    alpha: float = Field(32.0, gt=0)
    """Scale numerator: the adapter's update is multiplied by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter's input. PPO needs 0 (a dropout would make the first-minibatch ratio differ from 1);
    DPO may use it (its policy trains in train mode; the adapter-off reference always runs without dropout)."""
    target_modules: Optional[list[str]] = None
    """Names (or name suffixes) of the modules that get an adapter. Default: every linear projection of the
    transformer blocks, not the LM head (peft's `all-linear`): q/k/v/o and gate/up/down on Llama, Mistral, Qwen and
    SmolLM; c_attn, c_proj and c_fc on GPT-2."""
    merge_on_save: bool = False
    """Also save the merged model (base weights plus the adapter's update), which a plain
    `AutoModelForCausalLM.from_pretrained` loads without peft, next to the adapter."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None:
            if not value:
                raise ValueError("must name at least one module, or be left out for every linear projection")
            if any(not v.strip() for v in value):
                raise ValueError("module names must not be empty")
        return value
