"""SFT examples → token ids with a completion mask; right-padded batches; optional packing.

One example is ``{"input_ids": list[int], "completion_mask": list[int]}``: ``completion_mask[t] = 1`` where token ``t``
belongs to the completion (the assistant turns of a conversation, the ``completion`` of a prompt/completion pair, the
whole ``text`` of a plain-text record). Every example ends with exactly one EOS, which is part of the completion
(ppo_details.md A4): a completion that already ends with EOS does not get a second one.

Tokenisation is by segment: the prompt (or the template text around assistant turns) and the completion are tokenised
separately and concatenated, so the prompt tokens are exactly those the policy sees at generation time. The first
segment is encoded by the one prompt rule (:func:`tether.data.prompts.encode_prompt`): the tokenizer's leading special
tokens (a BOS), unless the text already starts with them (a chat template that writes its own), then the text's tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tether.data.prompts import encode_prompt
from tether.data.readers import has_chat_template, render_chat
from tether.errors import DataError

IGNORE_INDEX = -100


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _chat_segments(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant) pieces by rendering growing prefixes."""
    full = render_chat(messages, tokenizer)
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = render_chat(messages[:i], tokenizer, add_generation_prompt=True) if i else ""
        upto = render_chat(messages[: i + 1], tokenizer)
        if not (full.startswith(before) and full.startswith(upto) and pos <= len(before) <= len(upto)):
            raise DataError(
                "the chat template does not render a conversation as the concatenation of its turns, so the "
                "assistant tokens cannot be found; use prompt/completion records instead"
            )
        segments.append((full[pos : len(before)], False))
        segments.append((full[len(before) : len(upto)], True))
        pos = len(upto)
    segments.append((full[pos:], False))
    return segments


def sft_segments(record: dict[str, Any], tokenizer: Any) -> tuple[list[tuple[str, bool]], bool]:
    """(segments, templated): the record as text pieces flagged ``True`` where they are completion.

    ``templated`` is True when the text came from the tokenizer's chat template (it then holds its special tokens).
    """
    if "messages" in record:
        return _chat_segments(record["messages"], tokenizer), has_chat_template(tokenizer)
    if "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, list):
            head = render_chat(prompt, tokenizer, add_generation_prompt=True)
            full = render_chat(prompt + completion, tokenizer)
            if not full.startswith(head):
                raise DataError("the chat template does not render the prompt as a prefix of the conversation")
            return [(head, False), (full[len(head) :], True)], has_chat_template(tokenizer)
        return [(prompt, False), (completion, True)], False
    if "text" in record:
        return [(record["text"], True)], False
    raise DataError("an SFT record needs 'prompt' and 'completion', 'messages' or 'text'")


def tokenize_sft(record: dict[str, Any], tokenizer: Any, *, max_length: int | None = None) -> dict[str, Any]:
    """One validated SFT record → ``{"input_ids", "completion_mask", "truncated"}`` (lists of ints, a bool).

    Inside a completion segment the tokens after its first EOS (a chat template's newline, say) are not targets;
    the last completion segment ends at its EOS (appended when missing), and nothing after it is kept.
    Sequences longer than ``max_length`` keep their first ``max_length`` tokens (``truncated=True``); they then
    lose their EOS.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; SFT needs one to teach the model to stop")
    segments, _ = sft_segments(record, tokenizer)
    last_target = max(i for i, (_, target) in enumerate(segments) if target)
    ids: list[int] = []
    mask: list[int] = []
    for i, (text, target) in enumerate(segments[: last_target + 1]):
        if i == 0:  # the sequence starts as every prompt does (tether.data.prompts); the prefix is never a target
            prefix, toks = encode_prompt(tokenizer, text)
            ids += prefix
            mask += [0] * len(prefix)
        else:
            toks = _ids(tokenizer, text, add_special_tokens=False)
        if not target:
            ids += toks
            mask += [0] * len(toks)
            continue
        if i == last_target:
            while toks and toks[-1] == eos:
                toks.pop()
            toks = toks[: toks.index(eos) + 1] if eos in toks else toks + [eos]
            ids += toks
            mask += [1] * len(toks)
        else:
            cut = toks.index(eos) + 1 if eos in toks else len(toks)
            ids += toks
            mask += [1] * cut + [0] * (len(toks) - cut)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask, "truncated": truncated}


def tokenize_sft_records(
    records: Sequence[dict[str, Any]], tokenizer: Any, *, max_length: int | None = None, completion_only: bool = True
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Tokenise every record; drop those left with no target token. Returns (examples, counts) where counts has
    ``truncated`` and ``dropped`` (examples whose completion was cut away entirely by ``max_length``)."""
    examples, truncated, dropped = [], 0, 0
    for rec in records:
        ex = tokenize_sft(rec, tokenizer, max_length=max_length)
        truncated += ex["truncated"]
        has_target = any(ex["completion_mask"][1:]) if completion_only else len(ex["input_ids"]) > 1
        if not has_target:
            dropped += 1
            continue
        examples.append(ex)
    return examples, {"truncated": truncated, "dropped": dropped}


def pack_sft(examples: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Pack whole examples into rows of at most ``max_length`` tokens (best-fit decreasing; none is split).

    Each packed row carries ``position_ids`` that restart at 0 for every example. Transformers turns restarting
    positions (with no attention mask and no cache) into a block-diagonal causal mask, so packed examples do not see
    each other and their loss equals the unpacked loss. The first token of each example is never a target.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, bin index)
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example of {n} tokens does not fit max_length={max_length}; truncate it first")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    packed = []
    for members in bins:
        ids, mask, pos = [], [], []
        for i in sorted(members):
            ex = examples[i]
            ids += ex["input_ids"]
            mask += ex["completion_mask"]
            pos += list(range(len(ex["input_ids"])))
        packed.append({"input_ids": ids, "completion_mask": mask, "position_ids": pos, "truncated": False})
    return packed


def collate_sft(
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    *,
    completion_only: bool = True,
    pad_to: int | None = None,
) -> dict[str, Tensor]:
    """Right-pad examples into a batch.

    Returns ``input_ids`` (B, L) long, ``attention_mask`` (B, L) long, ``loss_mask`` (B, L) bool — True at the
    tokens that are targets (completion tokens, or every real token with ``completion_only=False``; never the first
    token of an example, which nothing predicts) — and ``labels`` (B, L) long, the input ids with −100 outside
    ``loss_mask`` (so a plain ``model(..., labels=labels)`` agrees). Packed examples also give ``position_ids``.
    ``pad_to`` pads to at least that length.
    """
    if not examples:
        raise ValueError("collate_sft needs at least one example")
    length = max(len(ex["input_ids"]) for ex in examples)
    if pad_to is not None:
        length = max(length, pad_to)
    b = len(examples)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    target = torch.zeros((b, length), dtype=torch.bool)
    packed = "position_ids" in examples[0]
    position_ids = torch.zeros((b, length), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        input_ids[row, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        wanted = ex["completion_mask"] if completion_only else [1] * n
        target[row, :n] = torch.tensor(wanted, dtype=torch.bool)
        pos = ex["position_ids"] if packed else list(range(n))
        position_ids[row, :n] = torch.tensor(pos, dtype=torch.long)
        position_ids[row, n:] = torch.arange(length - n)  # pads form their own trailing block
    loss_mask = target & (position_ids > 0) & attention_mask.bool()
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "labels": input_ids.masked_fill(~loss_mask, IGNORE_INDEX),
    }
    if packed:
        batch["position_ids"] = position_ids
    return batch
