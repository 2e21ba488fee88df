"""Sample completions from the tempered policy and package them as a ``Rollout``."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tether import ops
from tether.errors import DataError
from tether.models.forward import causal_lm_logits
from tether.records import Rollout


@dataclass(frozen=True)
class PromptBatch:
    """Tokenised prompts, left-padded to a common length Q."""

    input_ids: Tensor  # (B, Q) long
    attention_mask: Tensor  # (B, Q) bool
    prompts: list[str]  # B prompts as given


def encode_prompts(
    tokenizer, prompts: list[str], texts: list[str], max_length: int, truncation: str = "left"
) -> PromptBatch:
    """Tokenise prompt texts (already chat-formatted when needed) and left-pad them (ppo_details.md A2).

    ``truncation="left"`` keeps the last ``max_length`` tokens; ``"error"`` raises ``DataError``.
    """
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for i, ids in enumerate(rows):
        if not ids:
            raise DataError(f"prompt {i}: tokenises to nothing")
        if len(ids) > max_length:
            if truncation == "error":
                raise DataError(f"prompt {i}: {len(ids)} tokens exceeds max_prompt_length={max_length}")
            rows[i] = ids[-max_length:]
    q = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), q), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), q), dtype=torch.bool)
    for i, ids in enumerate(rows):
        input_ids[i, q - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, q - len(ids) :] = True
    return PromptBatch(input_ids, mask, list(prompts))


def sampling_config(model: nn.Module, tokenizer, *, response_length: int, temperature: float, stop_at_eos: bool):
    """A generation config that samples purely from softmax(logits/T): no top-k/top-p, no repetition penalty,
    no forced length; built from a copy of the model's own so none of its defaults leak in (ppo_details.md D1, D2)."""
    gen = copy.deepcopy(model.generation_config)
    gen.do_sample = True
    gen.temperature = temperature
    gen.top_k = 0
    gen.top_p = 1.0
    gen.min_p = None
    gen.typical_p = 1.0
    gen.repetition_penalty = 1.0
    gen.no_repeat_ngram_size = 0
    gen.num_beams = 1
    gen.max_new_tokens = response_length
    gen.max_length = None
    gen.min_new_tokens = None  # with stop_at_eos off there is no EOS criterion: every row runs to max_new_tokens
    gen.min_length = 0
    gen.bad_words_ids = None
    gen.suppress_tokens = None
    gen.begin_suppress_tokens = None
    gen.forced_bos_token_id = None
    gen.forced_eos_token_id = None
    gen.eos_token_id = tokenizer.eos_token_id if stop_at_eos else None
    gen.pad_token_id = tokenizer.pad_token_id
    gen.output_scores = True
    gen.return_dict_in_generate = True
    gen.use_cache = True
    return gen


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
) -> tuple[Rollout, Tensor]:
    """Sample one completion per prompt row, truncate after the first EOS, recompute the old log-probs with the
    training forward (so the first minibatch has ratio 1 exactly, ppo_details.md D5 path b).

    Returns the rollout and ``gen_logprobs`` (B, R): the log-probs the sampler itself used, for the
    ``rollout/logprob_mismatch_max`` metric.
    """
    was_training = policy.training
    policy.eval()
    gen = sampling_config(
        policy, tokenizer, response_length=response_length, temperature=temperature, stop_at_eos=stop_at_eos
    )
    out = policy.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(), generation_config=gen)
    q = batch.input_ids.shape[1]
    seq = out.sequences[:, q:]
    n = seq.shape[1]
    responses = torch.full((seq.shape[0], response_length), tokenizer.pad_token_id, dtype=torch.long)
    responses[:, :n] = seq
    # generate() fills finished rows with pad; the mask comes from the first EOS only
    response_mask, has_eos = ops.response_mask_from_eos(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(~response_mask, tokenizer.pad_token_id)
    scores = torch.stack(out.scores, dim=1).float()  # (B, n, V) processed: already divided by T
    gen_logprobs = torch.zeros_like(responses, dtype=torch.float32)
    gen_logprobs[:, :n] = ops.logprobs_from_logits(scores, seq.clamp(max=scores.shape[-1] - 1), 1.0)
    del out, scores

    query_response = torch.cat([batch.input_ids, responses], dim=1)
    attention_mask = torch.cat([batch.attention_mask, response_mask], dim=1)
    logprobs = response_logprobs(policy, query_response, attention_mask, q, temperature, micro_batch_size)
    logprobs = torch.where(response_mask, logprobs, 0.0)
    gen_logprobs = torch.where(response_mask, gen_logprobs, 0.0)
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
    )
    return rollout, gen_logprobs


def response_logprobs(
    model: nn.Module, query_response: Tensor, attention_mask: Tensor, q: int, temperature: float, micro_batch_size: int
) -> Tensor:
    """Tempered log-probs of the response tokens under ``model``, in micro-batches. Shapes: (B, Q+R) → (B, R).

    Logits at column j score the token at column j+1, so the response slice is ``[q-1 : -1]`` (ppo_details.md §0).
    """
    out = []
    for start in range(0, query_response.shape[0], micro_batch_size):
        ids = query_response[start : start + micro_batch_size]
        mask = attention_mask[start : start + micro_batch_size]
        logits = causal_lm_logits(model, ids, mask)[:, q - 1 : -1]
        out.append(ops.logprobs_from_logits(logits, ids[:, q:], temperature))
    return torch.cat(out)
