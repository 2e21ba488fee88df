"""Preference pairs → token ids for a reward model; right-padded chosen/rejected batches.

How a (prompt, completion) becomes reward-model input depends on the backbone (``style``):

- ``"decoder"`` (GPT-2, Llama, … with a score head read at the last real token): prompt tokens by the one prompt rule
  (:func:`tether.data.prompts.encode_prompt`: the tokenizer's BOS unless the text already starts with it) +
  completion tokens + exactly one EOS when the completion ended (ppo_details.md A4/C2). The score is read at that EOS;
  a completion cut by a length limit (``ended=False``) gets no EOS and is scored at its last token, as the token path
  scores it. Too long: the prompt loses text tokens from its left (never its BOS), then the completion from its right
  (the EOS stays last).
- ``"encoder"`` (BERT-like, pooled ``[CLS]``): the tokenizer's sentence-pair encoding ``[CLS] prompt [SEP]
  completion [SEP]`` truncated longest-first; no EOS. Token type ids are not used (all 0).

Conversations (lists of turns) are rendered with :func:`tether.data.readers.render_chat`: the prompt with
``add_generation_prompt=True``, the completion as the rest of the rendered conversation.

PPO scores its rollouts with :func:`encode_for_reward_model` on the decoded prompt and response texts (and whether each
response ended with EOS), so the reward model sees exactly the input format it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from tether.data.prompts import encode_prompt
from tether.data.readers import has_chat_template, render_chat
from tether.errors import DataError

RewardStyle = Literal["decoder", "encoder"]


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]) if text else []


def _texts(prompt: str | list, completion: str | list, tokenizer: Any) -> tuple[str, str, bool]:
    """(prompt text, completion text, templated)."""
    if isinstance(prompt, list):
        head = render_chat(prompt, tokenizer, add_generation_prompt=True)
        full = render_chat(prompt + list(completion), tokenizer)
        if not full.startswith(head):
            raise DataError("the chat template does not render the prompt as a prefix of the conversation")
        return head, full[len(head) :], has_chat_template(tokenizer)
    return prompt, completion, False


def encode_for_reward(
    tokenizer: Any, prompt: str | list, completion: str | list, *, style: RewardStyle, max_length: int,
    ended: bool = True,
) -> list[int]:
    """Token ids of one (prompt, completion) for a reward model of the given ``style`` (see the module docstring).

    ``ended``: the completion finished (decoders: one EOS is appended); False for a completion cut by the response
    length limit, which must not be scored as if it had ended (no EOS is appended; the encoder style ignores it).
    """
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")
    prompt_text, completion_text, _ = _texts(prompt, completion, tokenizer)
    if style == "encoder":
        if prompt_text.strip():
            enc = tokenizer(prompt_text, completion_text, truncation="longest_first", max_length=max_length)
        else:
            enc = tokenizer(completion_text, truncation=True, max_length=max_length)
        return list(enc["input_ids"])
    if style != "decoder":
        raise ValueError(f"unknown reward input style {style!r}; choose 'decoder' or 'encoder'")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the reward tokenizer has no EOS token; a decoder reward model reads its score at the EOS")
    lead, p = encode_prompt(tokenizer, prompt_text)
    c = _ids(tokenizer, completion_text, add_special_tokens=False)
    while c and c[-1] == eos:
        c.pop()
    if eos in c:  # a template's end-of-turn EOS: the sequence ends there
        c = c[: c.index(eos)]
    end = [eos] if ended else []
    room = max(1, max_length - len(end) - len(lead))  # text tokens that fit beside the BOS and the EOS
    if len(p) + len(c) > room:
        keep_prompt = max(min(len(p), room // 2), room - len(c))
        p = p[len(p) - keep_prompt :] if keep_prompt > 0 else []
        c = c[: room - len(p)]
    return lead + p + c + end


def tokenize_pairs(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    style: RewardStyle,
    max_length: int,
    margin_column: str | None = None,
    group_column: str | None = None,
) -> list[dict[str, Any]]:
    """Validated preference records → ``{"chosen_ids", "rejected_ids", "margin", "group"}`` dicts.

    ``margin`` is the float in ``margin_column`` (0.0 without one); ``group`` is the value of ``group_column`` as a
    string, or None when the column is absent from the record.
    """
    out = []
    for rec in records:
        group = rec.get(group_column) if group_column else None
        out.append(
            {
                "chosen_ids": encode_for_reward(
                    tokenizer, rec["prompt"], rec["chosen"], style=style, max_length=max_length
                ),
                "rejected_ids": encode_for_reward(
                    tokenizer, rec["prompt"], rec["rejected"], style=style, max_length=max_length
                ),
                "margin": float(rec[margin_column]) if margin_column else 0.0,
                "group": None if group is None else str(group),
            }
        )
    return out


def pad_right(
    sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad token lists → ``input_ids`` (N, L) long, ``attention_mask`` (N, L) long."""
    if not sequences:
        raise ValueError("nothing to pad")
    length = max(len(s) for s in sequences)
    if pad_to is not None:
        length = max(length, pad_to)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def collate_pairs(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """N pairs → one right-padded batch of 2N rows, the N chosen first, then the N rejected (one forward, C3).

    Returns ``input_ids`` (2N, L), ``attention_mask`` (2N, L), ``margin`` (N,) float32, ``groups`` (list of N).
    """
    seqs = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
    input_ids, attention_mask = pad_right(seqs, pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "margin": torch.tensor([ex["margin"] for ex in examples], dtype=torch.float32),
        "groups": [ex["group"] for ex in examples],
    }


def infer_reward_style(tokenizer: Any) -> RewardStyle:
    """Guess the input style from a tokenizer alone: ``"encoder"`` when it has both a CLS and a SEP token (BERT,
    RoBERTa, MiniLM), else ``"decoder"``. With the model at hand prefer
    :func:`tether.models.scalar.reward_input_style`."""
    if getattr(tokenizer, "cls_token_id", None) is not None and getattr(tokenizer, "sep_token_id", None) is not None:
        return "encoder"
    return "decoder"


def encode_for_reward_model(
    tokenizer: Any,
    prompts: Sequence[str | list],
    completions: Sequence[str | list],
    *,
    max_length: int,
    style: RewardStyle | None = None,
    ended: Sequence[bool] | None = None,
) -> tuple[Tensor, Tensor]:
    """Encode B (prompt, completion) pairs for a reward model → right-padded ``input_ids``, ``attention_mask`` (B, L).

    Same encoding as training (:func:`encode_for_reward`); ``style=None`` infers it from the tokenizer
    (:func:`infer_reward_style`). ``ended``: per pair, whether the completion finished (a rollout's ``has_eos``);
    default all True. Feed the result to :func:`tether.models.scalar.sequence_scores`. Pads use the tokenizer's pad
    token (its EOS when it has none: the mask, not the pad id, marks real tokens).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    ended = [True] * len(prompts) if ended is None else [bool(e) for e in ended]
    if len(ended) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ended)} ended flags")
    style = style or infer_reward_style(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the reward tokenizer has neither a pad nor an EOS token")
    seqs = [encode_for_reward(tokenizer, p, c, style=style, max_length=max_length, ended=e)
            for p, c, e in zip(prompts, completions, ended)]
    return pad_right(seqs, pad)
