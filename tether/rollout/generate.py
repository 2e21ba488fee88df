"""Sample completions from the tempered policy and package them as a ``Rollout``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from tether import ops
from tether.errors import DataError
from tether.models.forward import causal_lm_logits, causal_lm_logits_and_hidden
from tether.records import Rollout
from tether.rollout.sampler import sample


@dataclass(frozen=True)
class PromptBatch:
    """Tokenised prompts, left-padded to a common length Q."""

    input_ids: Tensor  # (B, Q) long
    attention_mask: Tensor  # (B, Q) bool
    prompts: list[str]  # B prompts as given

    def to(self, device) -> "PromptBatch":
        """The same batch with its tensors on ``device`` (the model's: prompts are tokenised on the CPU)."""
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), self.prompts)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter: where its inputs must be (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def encode_prompts(
    tokenizer, prompts: list[str], texts: list[str], max_length: int, truncation: str = "left"
) -> PromptBatch:
    """Tokenise prompt texts (already chat-formatted when needed) and left-pad them (ppo_details.md A2).

    Every prompt is encoded by the one prompt rule of :func:`tether.data.prompts.prompt_ids` (the tokenizer's BOS,
    once), so the policy sees the prompt ids SFT and reward-model training put before their completions.
    ``truncation="left"`` keeps the last ``max_length`` tokens (and the BOS); ``"error"`` raises ``DataError``.
    """
    from tether.data.prompts import prompt_ids

    rows = [prompt_ids(tokenizer, t) for t in texts]
    for i, ids in enumerate(rows):
        if not ids:
            raise DataError(f"prompt {i}: tokenises to nothing")
        if len(ids) > max_length:
            if truncation == "error":
                raise DataError(f"prompt {i}: {len(ids)} tokens exceeds max_prompt_length={max_length}")
            rows[i] = prompt_ids(tokenizer, texts[i], max_length)
    q = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0  # masked
    input_ids = torch.full((len(rows), q), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), q), dtype=torch.bool)
    for i, ids in enumerate(rows):
        input_ids[i, q - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, q - len(ids) :] = True
    return PromptBatch(input_ids, mask, list(prompts))


def sampling_config(model: nn.Module, tokenizer, *, response_length: int, temperature: float, stop_at_eos: bool):
    """A generation config that samples purely from softmax(logits/T) (ppo_details.md D1, D2).

    Built fresh — nothing is copied from ``model.generation_config`` — with every processor transformers knows set to
    its neutral value. ``generate`` still fills the fields left at None from the model's own generation config, so
    sample with :func:`pure_sampling` around the call: it puts a default config on the model for its duration.
    ``model`` is accepted for the signature's sake and not read.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, typical_p=1.0, min_p=None, top_h=None,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, bad_words_ids=None, sequence_bias=None,
        suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None,
        exponential_decay_length_penalty=None, remove_invalid_values=False, renormalize_logits=False,
        guidance_scale=None, watermarking_config=None, num_beams=1, num_return_sequences=1,
        max_new_tokens=response_length, min_length=0, min_new_tokens=None,
        # with stop_at_eos off there is no EOS criterion: every row runs to max_new_tokens
        eos_token_id=tokenizer.eos_token_id if stop_at_eos else None, pad_token_id=tokenizer.pad_token_id,
        output_scores=True, return_dict_in_generate=True, use_cache=True,
    )


@contextlib.contextmanager
def pure_sampling(model: nn.Module):
    """Swap a default ``GenerationConfig`` in as ``model.generation_config`` while sampling: ``generate`` fills every
    field a config leaves at None from the model's own (a checkpoint's ``epsilon_cutoff``, ``top_h``, sequence bias,
    watermarking, forced tokens …), which would sample from something other than softmax(logits/T)."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


@torch.no_grad()
def generate(
    policy: nn.Module,
    tokenizer,
    batch: PromptBatch,
    *,
    response_length: int,
    temperature: float,
    stop_at_eos: bool,
    micro_batch_size: int,
    seeds: Optional[Sequence[int]] = None,
    value_head: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[Rollout, Tensor]:
    """Sample one completion per prompt row with the per-row seeded sampler (:mod:`tether.rollout.sampler`),
    truncate after the first EOS, recompute the old log-probs with the training forward (so the first minibatch has
    ratio 1 exactly, ppo_details.md D5 path b).

    ``seeds``: one seed per row (PPO passes :func:`tether.rollout.sampler.row_seed` of each row's prompt index and
    sample index); None draws them from torch's global generator (so ``torch.manual_seed`` before the call fixes
    them, but then a row's completion depends on its place in the batch).
    ``value_head``: a value head on the policy's own trunk (``critic_mode=shared``, (B, L, d) → (B, L)): the forward
    that recomputes the old log-probs also gives the old values (``Rollout.values``), so the trunk runs once, not
    twice, over the rollout.
    Returns the rollout and ``gen_logprobs`` (B, R): the log-probs the sampler itself used, for the
    ``rollout/logprob_mismatch_max`` metric.
    """
    if seeds is None:  # from the CPU generator, whatever the device, so torch.manual_seed fixes them everywhere
        seeds = torch.randint(0, 2**63 - 1, (batch.input_ids.shape[0],)).tolist()
    batch = batch.to(model_device(policy))  # the rollout lives on the policy's device
    was_training = policy.training
    policy.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    drawn = sample(policy, batch.input_ids, batch.attention_mask, seeds, response_length=response_length,
                   temperature=temperature, eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
                   pad_token_id=pad)
    responses = drawn.tokens.to(batch.input_ids.device)
    # the mask comes from the first EOS only (with stop_at_eos off the sampler ran on past it)
    response_mask, has_eos = ops.response_mask_from_eos(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(~response_mask, pad)
    q = batch.input_ids.shape[1]
    query_response = torch.cat([batch.input_ids, responses], dim=1)
    attention_mask = torch.cat([batch.attention_mask, response_mask], dim=1)
    logprobs, values = response_logprobs_and_values(policy, value_head, query_response, attention_mask, q,
                                                    temperature, micro_batch_size)
    logprobs = torch.where(response_mask, logprobs, 0.0)
    gen_logprobs = torch.where(response_mask, drawn.logprobs.to(logprobs.dtype), 0.0)
    texts = tokenizer.batch_decode(
        [r[m].tolist() for r, m in zip(responses, response_mask)], skip_special_tokens=True
    )
    policy.train(was_training)
    rollout = Rollout(
        query_response=query_response,
        attention_mask=attention_mask,
        response_mask=response_mask,
        has_eos=has_eos,
        logprobs=logprobs,
        prompts=batch.prompts,
        completions=texts,
        query_length=q,
        values=values,
    )
    return rollout, gen_logprobs


def response_logprobs(
    model: nn.Module, query_response: Tensor, attention_mask: Tensor, q: int, temperature: float, micro_batch_size: int
) -> Tensor:
    """Tempered log-probs of the response tokens under ``model``, in micro-batches. Shapes: (B, Q+R) → (B, R).

    Logits at column j score the token at column j+1, so the response slice is ``[q-1 : -1]`` (ppo_details.md §0).
    """
    return response_logprobs_and_values(model, None, query_response, attention_mask, q, temperature,
                                        micro_batch_size)[0]


def response_logprobs_and_values(
    model: nn.Module, value_head: Optional[Callable[[Tensor], Tensor]], query_response: Tensor, attention_mask: Tensor,
    q: int, temperature: float, micro_batch_size: int,
) -> tuple[Tensor, Optional[Tensor]]:
    """:func:`response_logprobs` and, with ``value_head``, the head's outputs at the same columns from the same trunk
    pass per micro-batch (:func:`tether.models.forward.causal_lm_logits_and_hidden`, what the training forward of a
    shared critic runs). Shapes: (B, Q+R) → (B, R), (B, R) or None; the values are those of every column, pads
    included (the caller masks)."""
    lps, vals = [], []
    for start in range(0, query_response.shape[0], micro_batch_size):
        ids = query_response[start : start + micro_batch_size]
        mask = attention_mask[start : start + micro_batch_size]
        if value_head is None:
            logits = causal_lm_logits(model, ids, mask)
        else:
            logits, hidden = causal_lm_logits_and_hidden(model, ids, mask)
            vals.append(value_head(hidden)[:, q - 1 : -1])
        lps.append(ops.logprobs_from_logits(logits[:, q - 1 : -1], ids[:, q:], temperature))
    return torch.cat(lps), (torch.cat(vals) if vals else None)
