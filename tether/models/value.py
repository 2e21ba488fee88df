"""Critic: a transformer trunk with a scalar head read at every position."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from tether.console import library_bars
from tether.models.forward import position_ids_from_mask
from tether.models.load import disable_dropout
from tether.ops.precision import to_compute


class ValueModel(nn.Module):
    """``values[b, t] = head(trunk(x)[b, t])``. Shapes: input_ids (B, L) → (B, L) float32."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return self.values_from_hidden(hidden)

    def values_from_hidden(self, hidden: Tensor) -> Tensor:
        """The head on a last hidden state computed elsewhere (a trunk shared with the policy). (B, L, d) → (B, L)."""
        out = self.head(hidden).squeeze(-1)
        return to_compute(out)

    @classmethod
    def from_pretrained_model(cls, model: nn.Module) -> "ValueModel":
        """A critic from a causal LM or a decoder sequence classifier: its trunk, plus its 1-output score head when
        it has one (a reward model: V then starts at the RM's score), else a fresh head initialised to zero, as
        lm-human-preferences does (ppo_details.md G1): V ≡ 0 at the start, so the first advantages are GAE(r, 0), a
        shared trunk gets no value gradient until the head has learnt something, and the value clip (which lets V
        move by at most `value_clip` per update) does not have to walk a random head back to the returns."""
        trunk = model.base_model
        hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        score = getattr(model, "score", None)
        dtype = next(trunk.parameters()).dtype
        head = nn.Linear(hidden, 1, bias=True).to(dtype)
        if isinstance(score, nn.Linear) and score.out_features == 1:
            # start from the reward model's head, including a score offset stored in its config (bias-free heads)
            offset = float(getattr(model.config, "tether_score_offset", 0.0) or 0.0)
            with torch.no_grad():
                head.weight.copy_(score.weight)
                head.bias.fill_(offset + (float(score.bias) if score.bias is not None else 0.0))
        else:
            with torch.no_grad():
                head.weight.zero_()
                head.bias.zero_()
        return disable_dropout(cls(trunk, head))

    def save(self, out_dir: str | Path, trunk: bool = True) -> None:
        """Trunk in ``save_pretrained`` format (unless ``trunk=False``: it is the policy's, saved with it) plus
        ``value_head.safetensors``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if trunk:
            with library_bars():  # transformers' "Writing model shards" bar only on a terminal
                self.trunk.save_pretrained(str(out))
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / "value_head.safetensors"))
