"""A reward model as a reward source: token path when it shares the policy's tokenizer, text path otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from tether.models.load import load_sequence_classifier, load_tokenizer


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers map text to the same ids (same vocabulary and special tokens)."""
    if a is None or b is None:
        return False
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


class RewardModelScorer:
    """Frozen 1-label sequence classifier; the score is read at the last real token (ppo_details.md C2, C6)."""

    def __init__(self, model: nn.Module, tokenizer, policy_tokenizer=None, micro_batch_size: int = 16,
                 max_length: int = 512):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.shares_tokenizer = same_tokenizer(tokenizer, policy_tokenizer)
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length

    @classmethod
    def from_path(cls, path: str | Path, policy_tokenizer=None, dtype=torch.float32, trust_remote_code=False):
        model = load_sequence_classifier(path, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return cls(model, tokenizer, policy_tokenizer)

    @property
    def device(self) -> torch.device:
        """Where the reward model is (its inputs are moved there; its scores come back on it)."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score_rollout(self, rollout) -> Tensor:
        """Token path: score the post-processed query+response ids directly (same tokenizer only); else the text path,
        told which completions ended with EOS (a completion cut by the length limit gains none)."""
        if not self.shares_tokenizer:
            return self(rollout.prompts, rollout.completions, ended=rollout.has_eos.tolist())
        from tether.models.scalar import sequence_scores

        out = []
        for s in range(0, rollout.query_response.shape[0], self.micro_batch_size):
            ids = rollout.query_response[s : s + self.micro_batch_size].to(self.device)
            mask = rollout.attention_mask[s : s + self.micro_batch_size].to(self.device)
            out.append(sequence_scores(self.model, ids, mask.long()).float())
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], ended: Optional[Sequence[bool]] = None) -> Tensor:
        """Text path: re-encode (prompt, completion) with the reward model's own tokenizer. ``ended``: per completion,
        whether it finished with EOS (default: all did); a decoder reward model reads an unfinished one at its last
        token, with no EOS appended (:func:`tether.data.preferences.encode_for_reward`)."""
        from tether.data.preferences import encode_for_reward_model
        from tether.models.scalar import sequence_scores

        ended = [True] * len(prompts) if ended is None else list(ended)
        out = []
        for s in range(0, len(prompts), self.micro_batch_size):
            k = slice(s, s + self.micro_batch_size)
            ids, mask = encode_for_reward_model(
                self.tokenizer, prompts[k], completions[k], max_length=self.max_length, ended=ended[k],
            )
            out.append(sequence_scores(self.model, ids.to(self.device), mask.to(self.device)).float())
        return torch.cat(out)
