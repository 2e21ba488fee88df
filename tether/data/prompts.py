"""Prompt text → token ids: the one encoding rule every stage uses, and prompt sets that remember where each prompt
came from.

**The rule.** A prompt (or the text in front of a completion) is encoded as the tokenizer's *leading* special tokens
(the BOS of Llama, Mistral and Gemma tokenizers; nothing for GPT-2, Qwen or SmolLM2) followed by the text's own
tokens, where

- leading special tokens that the text already starts with (a chat template that writes its own ``<s>`` or
  ``<|begin_of_text|>``) are not repeated, and
- trailing special tokens (an EOS that a post-processor appends) are not part of a prompt.

SFT (:mod:`tether.data.sft`), reward-model training and scoring (:mod:`tether.data.preferences`), PPO rollouts,
held-out evaluation and ``tether eval`` (:func:`tether.rollout.generate.encode_prompts`) all call
:func:`encode_prompt`, so the ids the policy, the reference, the critic and a same-tokenizer reward model see before a
completion are the ids they were trained on (``tether doctor``'s ``prompt_encoding`` check compares them). Left
truncation drops the oldest text tokens and keeps the special prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.console import warn
from tether.errors import DataError

_PROBE = "a"
"""Text used to find the special prefix when the text itself is empty (the prefix does not depend on the text)."""


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _find(haystack: list[int], needle: list[int]) -> int | None:
    """Smallest k with ``haystack[k : k + len(needle)] == needle``; None when there is none."""
    n = len(needle)
    for k in range(len(haystack) - n + 1):
        if haystack[k : k + n] == needle:
            return k
    return None


def encode_prompt(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """``(prefix, body)``: the special tokens to put first and the text's own tokens; the prompt is ``prefix + body``.

    ``prefix`` is what ``tokenizer(text, add_special_tokens=True)`` puts before the text's tokens, or ``[]`` when the
    text's tokens already start with it. A tokenizer whose special tokens change how the text itself is tokenised (no
    known one does) gets its own with-special-tokens encoding as the prefix and an empty body.
    """
    body = _encode(tokenizer, text, False)
    if not body:
        probe_full, probe_body = _encode(tokenizer, _PROBE, True), _encode(tokenizer, _PROBE, False)
        k = _find(probe_full, probe_body)
        return (probe_full[:k] if k is not None else []), []
    full = _encode(tokenizer, text, True)
    k = _find(full, body)
    if k is None:
        return full, []
    prefix = full[:k]
    if body[:k] == prefix:
        return [], body
    return prefix, body


def prompt_ids(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    """Token ids of one prompt under the rule above; with ``max_length``, the oldest text tokens are dropped until it
    fits (the special prefix stays, unless ``max_length`` leaves no room for any text token)."""
    prefix, body = encode_prompt(tokenizer, text)
    ids = prefix + body
    if max_length is None or len(ids) <= max_length:
        return ids
    room = max_length - len(prefix)
    return prefix + body[-room:] if room > 0 else ids[-max_length:]


# --------------------------------------------------------------------------------------------- prompt sets


@dataclass(frozen=True)
class PromptSet:
    """Prompts ready to tokenise, each with where it came from (``file line N``, ``file row N``, ``prompts item N``)."""

    texts: list[str]
    where: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_prompt_set(source: Any, tokenizer: Any = None) -> PromptSet:
    """:func:`tether.data.readers.load_prompts` that also keeps the origin of every prompt (for one-line errors that
    name the file line). A list of strings is named ``prompts item N`` (1-based)."""
    from tether.data.readers import located_prompts, render_chat

    if isinstance(source, (list, tuple)) and not source:
        return PromptSet([], [])
    located = located_prompts(source)
    texts = [p if isinstance(p, str) else render_chat(p, tokenizer, add_generation_prompt=True) for _, p in located]
    return PromptSet(texts, [w for w, _ in located])


def check_prompt_lengths(tokenizer: Any, prompts: PromptSet, max_length: int, truncation: str = "left") -> None:
    """Refuse (``truncation="error"``) or announce on stderr (``"left"``) prompts longer than ``max_length`` tokens
    under :func:`prompt_ids`, and refuse a prompt that encodes to nothing; errors name the prompt's file line."""
    lengths = [len(prompt_ids(tokenizer, t)) for t in prompts.texts]
    for where, n in zip(prompts.where, lengths):
        if n == 0:
            raise DataError(f"{where}: the prompt tokenises to nothing")
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if not long:
        return
    if truncation == "error":
        i = long[0]
        raise DataError(f"{prompts.where[i]}: the prompt has {lengths[i]} tokens, more than max_prompt_length="
                        f"{max_length} (prompt_truncation=error)")
    warn(f"{len(long)} of {len(prompts)} prompts exceed max_prompt_length={max_length} tokens (first: "
         f"{prompts.where[long[0]]}); their oldest tokens are dropped (prompt_truncation=left)")
