"""`tether doctor` catches each planted mistake — pad == EOS, right-padded prompts on an absolute-position model,
position ids counting pads, the reward read at the wrong index, temperature not applied, dropout left on, chat data
without a template, a plan that does not fit in memory — and passes a correct set-up. Tiny random models, real
GPT-2 and MiniLM tokenizers."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from _tiny import bert_rm, gpt2_rm, llama_rm, minilm_tok  # noqa: E402

from tether.cli import main  # noqa: E402
from tether.config.ppo import PPOConfig  # noqa: E402
from tether.doctor import (  # noqa: E402
    ALL_CHECKS, FAST_CHECKS, check_chat_template, check_memory, check_pad_token, check_padding, check_reward_model,
    check_rollout_logprobs, check_zero_update, format_results, run_checks,
)
from tether.models.forward import position_ids_from_mask  # noqa: E402
from tether.models.scalar import last_token_index  # noqa: E402
from tether.rollout.generate import response_logprobs  # noqa: E402

PROMPTS = ["The movie was", "I think that this film is one of the", "Why"]
COMPLETIONS = [" great.", " best of the year, truly.", " not?"]


@pytest.fixture
def tok(gpt2_tok):
    gpt2_tok.add_special_tokens({"pad_token": "<|pad|>"})
    return gpt2_tok


def hf_forward(model, ids, mask):
    """The classic mistake: the model's own positions (0..L-1, counting the pads)."""
    return model(input_ids=ids, attention_mask=mask).logits


# ------------------------------------------------------------------------------------------ pad token


def test_pad_token(gpt2_tok):
    assert check_pad_token(gpt2_tok).status == "fail"                       # GPT-2: no pad at all
    gpt2_tok.pad_token = gpt2_tok.eos_token
    res = check_pad_token(gpt2_tok)
    assert res.status == "fail" and "EOS" in res.detail and "pad_token" in res.fix   # pad == EOS
    gpt2_tok.add_special_tokens({"pad_token": "<|pad|>"})
    assert check_pad_token(gpt2_tok).status == "pass"


# ------------------------------------------------------------------------------------------ padding / positions


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_padding_correct_setup_passes(arch, tok, make_gpt2, make_llama):
    model = (make_gpt2 if arch == "gpt2" else make_llama)(len(tok))
    assert check_padding(model, tok, PROMPTS).status == "pass"


def test_right_padded_prompts_on_gpt2_fail(tok, make_gpt2):
    res = check_padding(make_gpt2(len(tok)), tok, PROMPTS, padding_side="right")
    assert res.status == "fail" and "LEFT-padded" in res.fix


def test_positions_counting_pads_fail_on_absolute_positions(tok, make_gpt2, make_llama):
    res = check_padding(make_gpt2(len(tok)), tok, PROMPTS, forward=hf_forward)
    assert res.status == "fail" and "position_ids" in res.fix
    # RoPE (Llama) depends only on relative positions: a constant shift from left pads is harmless
    assert check_padding(make_llama(len(tok)), tok, PROMPTS, forward=hf_forward).status == "pass"


# ------------------------------------------------------------------------------------------ reward index


def _backbone_last(model, ids, mask, idx):
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                              use_cache=False).last_hidden_state
    return model.score(hidden[torch.arange(len(ids)), idx]).squeeze(-1)


def read_last_column(model, ids, mask):
    return _backbone_last(model, ids, mask, torch.full((len(ids),), ids.shape[1] - 1))


def read_one_before(model, ids, mask):
    return _backbone_last(model, ids, mask, (last_token_index(mask) - 1).clamp(min=0))


@pytest.mark.parametrize("make_rm", [gpt2_rm, llama_rm])
def test_reward_index(make_rm, tok):
    rm = make_rm(len(tok)).eval()
    assert check_reward_model(rm, tok, PROMPTS, COMPLETIONS).status == "pass"
    bad = check_reward_model(rm, tok, PROMPTS, COMPLETIONS, score_fn=read_last_column)
    assert bad.status == "fail" and "pads" in bad.fix
    off = check_reward_model(rm, tok, PROMPTS, COMPLETIONS, score_fn=read_one_before)
    assert off.status == "fail" and "last real token" in off.fix


def test_reward_check_tolerance_follows_the_model_dtype(tok):
    """`dtype: bfloat16` keeps the RM in bf16, whose rounding moves with the batch shape (~1e-2 on SmolLM2-size
    models): that must pass in bf16 and fail in float32, where it would mean a real indexing mistake."""
    from tether.models.scalar import sequence_scores

    def shape_dependent(model, ids, mask):  # a score that drifts by 1e-2 per row in the batch, like bf16 rounding
        return sequence_scores(model, ids, mask).float() + 1e-2 * ids.shape[0]

    rm = llama_rm(len(tok)).eval()
    assert check_reward_model(rm, tok, PROMPTS, COMPLETIONS, score_fn=shape_dependent).status == "fail"
    res = check_reward_model(rm.to(torch.bfloat16), tok, PROMPTS, COMPLETIONS, score_fn=shape_dependent)
    assert res.status == "pass", res.detail


def test_encoder_reward_model_passes():
    assert check_reward_model(bert_rm().eval(), minilm_tok(), PROMPTS, COMPLETIONS).status == "pass"


# ------------------------------------------------------------------------------------------ temperature, ratio, KL


def no_temperature(model, ids, mask, q, temperature, mb):
    return response_logprobs(model, ids, mask, q, 1.0, mb)


def test_zero_update_and_rollout_logprobs(tok, make_llama):
    policy = make_llama(len(tok))
    assert check_zero_update(policy, tok, PROMPTS, temperature=0.7).status == "pass"
    assert check_rollout_logprobs(policy, tok, PROMPTS, temperature=0.7).status == "pass"
    # temperature not applied by the training forward
    zu = check_zero_update(policy, tok, PROMPTS, temperature=0.7, logprob_fn=no_temperature)
    assert zu.status == "fail" and "temperature" in zu.fix
    assert check_rollout_logprobs(policy, tok, PROMPTS, temperature=0.7, logprob_fn=no_temperature).status == "fail"
    # temperature not applied by the sampler
    res = check_rollout_logprobs(policy, tok, PROMPTS, temperature=0.7, sample_temperature=1.0)
    assert res.status == "fail" and "same temperature" in res.fix


def test_dropout_left_on_breaks_ratio_one(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                       resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    assert check_zero_update(model, tok, PROMPTS, temperature=1.0).status == "fail"


# ------------------------------------------------------------------------------------------ chat template, memory


def test_chat_template(tok):
    chats = [[{"role": "user", "content": "Hi"}], "plain"]
    assert check_chat_template(tok, chats).status == "fail"
    assert check_chat_template(tok, ["plain only"]).status == "pass"
    assert check_chat_template(tok, None).status == "skip"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert check_chat_template(tok, chats).status == "pass"


def test_memory(tok, make_llama):
    policy = make_llama(len(tok))
    cfg = PPOConfig(micro_batch_size=8, rollout_batch_size=16)
    assert check_memory(cfg, policy, available_bytes=10**6).status == "fail"
    assert check_memory(cfg, policy, available_bytes=10**13).status == "pass"
    bigger = check_memory(cfg.model_copy(update={"micro_batch_size": 16}), policy, available_bytes=10**13)
    small = check_memory(cfg, policy, available_bytes=10**13)
    assert float(bigger.detail.split()[1]) > float(small.detail.split()[1])


# ------------------------------------------------------------------------------------------ assembled


@pytest.fixture
def rm_dir(tmp_path, gpt2_tok):
    tok = copy.deepcopy(gpt2_tok)
    model = gpt2_rm(len(tok) + 1, pad_token_id=len(tok))
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    d = tmp_path / "rm"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_run_checks_correct_setup(make_llama, gpt2_tok, rm_dir):
    policy = make_llama(len(gpt2_tok) + 1)
    cfg = PPOConfig(rewards=[{"kind": "model", "path": str(rm_dir), "name": "rm"}], response_length=6)
    results = run_checks(cfg, policy=policy, tokenizer=gpt2_tok, prompts=PROMPTS)
    by = {r.name: r for r in results}
    assert [r.name for r in results] == list(ALL_CHECKS)
    assert by["pad_token"].status == "warn"   # GPT-2 has no pad; tether adds one (pad_policy=add)
    assert all(r.status == "pass" for r in results if r.name != "pad_token"), format_results(results)
    assert gpt2_tok.pad_token is None          # the caller's tokenizer is left as it was
    fast = run_checks(cfg, policy=policy, tokenizer=gpt2_tok, prompts=PROMPTS, fast=True)
    assert [r.name for r in fast] == list(FAST_CHECKS)
    table = format_results(results)
    assert f"all {len(ALL_CHECKS)} checks passed (with warnings)" in table and "WARN" in table


def test_run_checks_pad_refused(make_llama, gpt2_tok):
    gpt2_tok.pad_token = gpt2_tok.eos_token
    cfg = PPOConfig(pad_policy="refuse", response_length=4)
    results = run_checks(cfg, policy=make_llama(len(gpt2_tok)), tokenizer=gpt2_tok, prompts=PROMPTS,
                         reward=lambda p, c: [0.0] * len(c), checks=["pad_token", "reward_last_token"])
    by = {r.name: r for r in results}
    assert by["pad_token"].status == "fail"
    assert by["reward_last_token"].status == "skip"
    assert "1 of 2 checks failed: pad_token" in format_results(results)


def test_doctor_command(tmp_path, make_llama, gpt2_tok, capsys):
    d = tmp_path / "policy"
    make_llama(len(gpt2_tok) + 1).save_pretrained(d)
    gpt2_tok.save_pretrained(d)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert main(["doctor", f"policy={d}", f"prompts={prompts}", "response_length=4"]) == 0
    out = capsys.readouterr().out
    assert "padding" in out and "zero_update" in out and "checks passed" in out
    assert main(["doctor", f"policy={d}", f"prompts={prompts}", "pad_policy=refuse", "response_length=4"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["doctor", f"policy={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tether: error:")
