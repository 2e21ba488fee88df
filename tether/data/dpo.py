"""Preference pairs → token ids with a completion mask for DPO/IPO; right-padded chosen/rejected batches.

Each side of a pair is encoded exactly as SFT encodes a prompt/completion record (:func:`tether.data.sft.tokenize_sft`:
the one prompt rule, so a BOS-adding tokenizer's BOS comes once; the completion ends with one EOS; chat prompts are
rendered with the template, the completion being the rest of the conversation), so the policy scores the pair in the
format it was fine-tuned on. ``completion_mask[t] = 1`` where token ``t`` belongs to the completion: the sequence
log-probability sums the policy's log-probabilities of those tokens only.

Too long (``max_length``) or a prompt over ``max_prompt_length``: the prompt loses text tokens from its left (never
its BOS), then the completion from its right (the EOS with it), by the reward model's rule
(:func:`tether.data.preferences.encode_for_reward`: the prompt keeps at least half the room it needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tether.data.preferences import pad_right
from tether.data.prompts import encode_prompt
from tether.data.sft import sft_segments, tokenize_sft


def encode_pair_side(tokenizer: Any, prompt: str | list, completion: str | list, *, max_length: int,
                     max_prompt_length: int | None = None) -> tuple[list[int], list[int], bool]:
    """(ids, completion_mask, truncated) of one (prompt, completion) as described in the module docstring."""
    record = {"prompt": prompt, "completion": completion}
    ex = tokenize_sft(record, tokenizer)
    ids, mask = ex["input_ids"], ex["completion_mask"]
    n_prompt = mask.index(1)
    lead = len(encode_prompt(tokenizer, sft_segments(record, tokenizer)[0][0][0])[0])
    lead = min(lead, n_prompt)
    head, body, comp = ids[:lead], ids[lead:n_prompt], ids[n_prompt:]
    truncated = False
    if max_prompt_length is not None and len(head) + len(body) > max_prompt_length:
        keep = max(0, max_prompt_length - len(head))
        body, truncated = body[len(body) - keep :] if keep else [], True
    room = max(1, max_length - len(head))
    if len(body) + len(comp) > room:
        keep_prompt = max(min(len(body), room // 2), room - len(comp))
        body = body[len(body) - keep_prompt :] if keep_prompt > 0 else []
        comp = comp[: room - len(body)]
        truncated = True
    return head + body + comp, [0] * (len(head) + len(body)) + [1] * len(comp), truncated


def tokenize_dpo_pairs(records: Sequence[dict[str, Any]], tokenizer: Any, *, max_length: int,
                       max_prompt_length: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Validated preference records → (examples, number of pairs truncated). An example is ``{"chosen_ids",
    "chosen_mask", "rejected_ids", "rejected_mask"}`` (lists of ints)."""
    out, cut = [], 0
    for rec in records:
        ex: dict[str, Any] = {}
        any_cut = False
        for key in ("chosen", "rejected"):
            ids, mask, truncated = encode_pair_side(tokenizer, rec["prompt"], rec[key], max_length=max_length,
                                                    max_prompt_length=max_prompt_length)
            ex[f"{key}_ids"], ex[f"{key}_mask"] = ids, mask
            any_cut |= truncated
        cut += any_cut
        out.append(ex)
    return out, cut


def collate_dpo(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """N pairs → one right-padded batch of 2N rows, the N chosen first, then the N rejected.

    Returns ``input_ids``, ``attention_mask`` (2N, L) long and ``completion_mask`` (2N, L) bool (False on pads).
    """
    seqs = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
    masks = [ex["chosen_mask"] for ex in examples] + [ex["rejected_mask"] for ex in examples]
    input_ids, attention_mask = pad_right(seqs, pad_token_id)
    completion = torch.zeros_like(attention_mask, dtype=torch.bool)
    for i, m in enumerate(masks):
        completion[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion}
