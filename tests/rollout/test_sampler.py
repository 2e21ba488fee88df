"""The per-row seeded KV-cache sampler (tether/rollout/sampler.py, issue 13): batch-invariant draws, the inverse-CDF
rule, the sampler's log-probs against the training forward, and the work it does (one forward per token)."""

from __future__ import annotations

import math

import pytest
import torch

from tether.models.load import ensure_pad_token, resize_for_tokenizer
from tether.rollout.generate import encode_prompts, generate, response_logprobs
from tether.rollout.sampler import inverse_cdf, row_seed, row_uniforms, sample

# different lengths, so every batch composition changes a row's left padding
PROMPTS = ["The movie was", "I think that the best thing about this whole story is", "Once upon a time",
           "My favourite food is pasta with", "Hi", "The weather today in the north of the country"]
OTHERS = ["A very long prompt that pads every other row of the batch much further to the left than before, really"]


def _model(tok, arch, dtype, make_llama, make_gpt2, make_eos_llama):
    ensure_pad_token(tok, "add")
    if arch == "llama-eos":  # EOS likely: rows stop at different steps
        model = make_eos_llama(tok, PROMPTS, target_p=0.15).to(dtype)
    else:
        model = (make_llama if arch == "llama" else make_gpt2)(len(tok), dtype=dtype)
    resize_for_tokenizer(model, tok)
    return model


def _draw(model, tok, texts, seeds, stop_at_eos=True, temperature=0.8, r=10):
    batch = encode_prompts(tok, texts, texts, 64)
    ro, gen_lp = generate(model, tok, batch, response_length=r, temperature=temperature, stop_at_eos=stop_at_eos,
                          micro_batch_size=len(texts), seeds=seeds)
    return [(ro.responses[i][ro.response_mask[i]].tolist(), gen_lp[i][ro.response_mask[i]]) for i in range(len(texts))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama-eos"])
def test_completion_does_not_depend_on_the_batch(gpt2_tok, make_llama, make_gpt2, make_eos_llama, arch, dtype):
    """A prompt's completion is the same sampled in one batch, in two halves, one row at a time, and beside other
    prompts (another left padding): only its own seed decides it."""
    model = _model(gpt2_tok, arch, dtype, make_llama, make_gpt2, make_eos_llama)
    seeds = [row_seed(7, 3, i, 0) for i in range(len(PROMPTS))]
    whole = _draw(model, gpt2_tok, PROMPTS, seeds)
    halves = _draw(model, gpt2_tok, PROMPTS[:3], seeds[:3]) + _draw(model, gpt2_tok, PROMPTS[3:], seeds[3:])
    single = [_draw(model, gpt2_tok, [p], [s])[0] for p, s in zip(PROMPTS, seeds)]
    other_seeds = [row_seed(7, 3, 99, k) for k in range(len(OTHERS))]
    around = _draw(model, gpt2_tok, OTHERS + PROMPTS[::-1], other_seeds + seeds[::-1])[len(OTHERS):][::-1]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for variant in (halves, single, around):
        for (tok_a, lp_a), (tok_b, lp_b) in zip(whole, variant):
            assert tok_a == tok_b
            torch.testing.assert_close(lp_a, lp_b, atol=tol, rtol=0)
    assert len({tuple(t) for t, _ in whole}) >= (2 if arch == "llama-eos" else len(PROMPTS))  # rows differ
    if arch == "llama-eos":
        lengths = {len(t) for t, _ in whole}
        assert len(lengths) > 1  # rows stopped at different steps
    # and the seed is what decides: another seed, another completion
    moved = _draw(model, gpt2_tok, PROMPTS, [row_seed(7, 4, i, 0) for i in range(len(PROMPTS))])
    assert [t for t, _ in moved] != [t for t, _ in whole]


def test_row_seeds_are_distinct_and_stable():
    """row_seed separates run seed, update, prompt and sample; row_uniforms' row i ignores the other seeds."""
    keys = [(s, u, i, k) for s in (0, 1) for u in (0, 1) for i in (0, 1, 10) for k in (0, 1)]
    assert len({row_seed(*key) for key in keys}) == len(keys)
    assert row_seed(0, 1, 2, 3) == row_seed(0, 1, 2, 3)
    a = row_uniforms([5, 6, 7], 12)
    b = row_uniforms([6], 12)
    assert torch.equal(a[1], b[0])
    assert a.dtype == torch.float64 and bool(((a >= 0) & (a < 1)).all())


def test_inverse_cdf_hand_computed():
    """p = (0.1, 0.2, 0.3, 0.4): cdf = (0.1, 0.3, 0.6, 1.0) at T=1; at T=2 p ∝ √p: cdf ≈ (0.163, 0.393, 0.675, 1)."""
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(6, 1)
    u = torch.tensor([0.0, 0.05, 0.25, 0.35, 0.61, 0.999])
    tokens, lp = inverse_cdf(logits, u, 1.0)
    assert tokens.tolist() == [0, 0, 1, 2, 3, 3]
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.1, 0.1, 0.2, 0.3, 0.4, 0.4], dtype=torch.float64)))
    tokens, lp = inverse_cdf(logits, u, 2.0)
    assert tokens.tolist() == [0, 0, 1, 1, 2, 3]  # u=0.35 falls below cdf[1] ≈ 0.393 once T flattens p
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).sqrt()
    torch.testing.assert_close(lp, (q / q.sum()).log()[[0, 0, 1, 1, 2, 3]])
    # a token of probability 0 is never drawn, even at the uniform that ends just on its (empty) step
    tokens, _ = inverse_cdf(torch.tensor([[0.0, -math.inf, 0.0]] * 3), torch.tensor([0.4999, 0.5, 0.9]), 1.0)
    assert tokens.tolist() == [0, 2, 2]


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_inverse_cdf_frequencies(temperature):
    """Over 20,000 seeded rows the drawn tokens follow softmax(logits / T): chi-square below the 0.1% critical value
    of 5 degrees of freedom (20.5); the same draws fail against softmax(logits) (the untempered distribution)."""
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, 0.0, -2.0])
    n = 20_000
    u = row_uniforms(list(range(n)), 1)[:, 0]
    tokens, _ = inverse_cdf(logits.expand(n, -1), u, temperature)
    counts = torch.bincount(tokens, minlength=6).double()

    def chi2(p):
        return float(((counts - n * p) ** 2 / (n * p)).sum())

    assert chi2(torch.softmax(logits.double() / temperature, -1)) < 20.515
    assert chi2(torch.softmax(logits.double(), -1)) > 100


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampler_logprobs_equal_training_forward(gpt2_tok, make_llama, make_gpt2, make_eos_llama, arch, dtype, tol):
    """The log-probs the sampler drew with (KV cache, last position) equal the training forward's (whole sequence,
    mask-derived positions) on every sampled token."""
    model = _model(gpt2_tok, arch, dtype, make_llama, make_gpt2, make_eos_llama)
    batch = encode_prompts(gpt2_tok, PROMPTS, PROMPTS, 64)
    ro, gen_lp = generate(model, gpt2_tok, batch, response_length=12, temperature=0.6, stop_at_eos=True,
                          micro_batch_size=2, seeds=list(range(len(PROMPTS))))
    with torch.no_grad():
        train = response_logprobs(model, ro.query_response, ro.attention_mask, ro.query_length, 0.6, 3)
        same_batches = response_logprobs(model, ro.query_response, ro.attention_mask, ro.query_length, 0.6, 2)
    m = ro.response_mask
    assert bool(m.any())
    assert gen_lp.dtype == dtype
    assert float((gen_lp - train).abs().masked_fill(~m, 0).max()) < tol
    # the rollout's log-probs are that forward, in the rollout's micro-batches (bit-equal only with the same batching:
    # a matmul's rounding may depend on how many rows it holds)
    assert torch.equal(ro.logprobs, torch.where(m, same_batches, 0.0))


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_one_forward_per_drawn_token(gpt2_tok, make_llama, make_gpt2, make_eos_llama, stop_at_eos):
    """With the KV cache the sampler makes one forward per step (the prompt pass draws the first token), feeds one
    token per row after the prompt, and stops once every row has its EOS (or after R steps without stop_at_eos)."""
    model = _model(gpt2_tok, "llama-eos", torch.float32, make_llama, make_gpt2, make_eos_llama)
    batch = encode_prompts(gpt2_tok, PROMPTS, PROMPTS, 64)
    widths = []
    real_forward = model.forward
    model.forward = lambda *a, **kw: widths.append(kw["input_ids"].shape[1]) or real_forward(*a, **kw)
    out = sample(model, batch.input_ids, batch.attention_mask, list(range(len(PROMPTS))), response_length=12,
                 temperature=1.0, eos_token_id=gpt2_tok.eos_token_id if stop_at_eos else None,
                 pad_token_id=gpt2_tok.pad_token_id)
    assert len(widths) == out.steps
    assert widths == [batch.input_ids.shape[1]] + [1] * (out.steps - 1)
    is_eos = out.tokens == gpt2_tok.eos_token_id
    assert bool(is_eos.any()), "the fixture should make EOS likely"
    if stop_at_eos:
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, 12)
        assert out.steps == int(first.max()) < 12 or out.steps == 12
        for row, n in zip(out.tokens, first.tolist()):  # pad after the first EOS
            assert bool((row[n:] == gpt2_tok.pad_token_id).all())
    else:
        assert out.steps == 12
