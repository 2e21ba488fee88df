"""Joining rollouts (tether/rollout/rows.py): rows kept, queries re-padded on the left without moving a real token."""

from __future__ import annotations

import torch

from tether.models.load import ensure_pad_token, resize_for_tokenizer
from tether.rollout.generate import encode_prompts, generate, response_logprobs
from tether.rollout.rows import concat_rollouts, select_rows


def test_concat_repads_queries_and_keeps_logprobs(gpt2_tok, make_gpt2):
    """Two rollouts with different query lengths join into one whose rows are the originals with more left pads;
    the training forward of the joined batch (GPT-2: absolute positions) gives each row's own log-probs again."""
    ensure_pad_token(gpt2_tok, "add")
    model = make_gpt2(len(gpt2_tok))
    resize_for_tokenizer(model, gpt2_tok)
    parts = []
    for texts, seeds in ((["Hi", "Hello there"], [1, 2]), (["A much longer prompt than the others here", "Yes"], [3, 4])):
        batch = encode_prompts(gpt2_tok, texts, texts, 64)
        parts.append(generate(model, gpt2_tok, batch, response_length=6, temperature=1.0, stop_at_eos=True,
                              micro_batch_size=2, seeds=seeds)[0])
    picked = select_rows(parts[1], torch.tensor([1, 0]))
    assert picked.prompts == parts[1].prompts[::-1] and torch.equal(picked.logprobs, parts[1].logprobs.flip(0))
    joined = concat_rollouts([parts[0], picked], gpt2_tok.pad_token_id)
    assert joined.query_length == max(p.query_length for p in parts) > parts[0].query_length
    assert joined.prompts == parts[0].prompts + picked.prompts
    for i, (src, row) in enumerate([(parts[0], 0), (parts[0], 1), (picked, 0), (picked, 1)]):
        extra = joined.query_length - src.query_length
        assert torch.equal(joined.query_response[i, extra:], src.query_response[row])
        assert not bool(joined.attention_mask[i, :extra].any())
        assert torch.equal(joined.responses[i], src.responses[row])
    with torch.no_grad():
        again = response_logprobs(model, joined.query_response, joined.attention_mask, joined.query_length, 1.0, 4)
    torch.testing.assert_close(torch.where(joined.response_mask, again, 0.0), joined.logprobs, atol=1e-5, rtol=0)
