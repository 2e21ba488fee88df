"""Reward sources in the trainer: a reward model with a different tokenizer, weighted sums, logging per source."""

from __future__ import annotations

import json

import pytest
import torch

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig
from tether.models.scalar import sequence_scores
from tether.rewards.base import RewardSource
from tether.rewards.reward_model import RewardModelScorer

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is"]


@pytest.fixture
def minilm_tok():
    from transformers import AutoTokenizer

    from tether.assets.minilm import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def tiny_bert_rm(tok, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=6,
                num_updates=1, num_ppo_epochs=1, progress=False, sample_every=1, num_samples_logged=4)
    base.update(kw)
    return PPOConfig(**base)


def test_reward_model_with_a_different_tokenizer(tmp_path, gpt2_tok, make_llama, minilm_tok):
    """A BERT-family RM (MiniLM tokenizer) scores GPT-2-tokenised rollouts by re-encoding their text."""
    rm = RewardModelScorer(tiny_bert_rm(minilm_tok), minilm_tok, policy_tokenizer=gpt2_tok)
    assert not rm.shares_tokenizer
    tr = PPOTrainer(cfg(tmp_path), policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
                    reward=RewardSource("rm", rm), prompts=PROMPTS)
    m = tr.step()
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    # the logged per-source score equals a direct scoring of (prompt, completion) text by the BERT RM
    from tether.data.preferences import encode_for_reward_model

    ids, mask = encode_for_reward_model(minilm_tok, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                                        max_length=512)
    with torch.no_grad():
        direct = sequence_scores(rm.model, ids, mask)
    torch.testing.assert_close(torch.tensor([r["rm"] for r in rows]), direct, atol=1e-5, rtol=0)
    assert m["objective/score/rm"] == pytest.approx(float(torch.tensor([r["rm"] for r in rows]).mean()), abs=1e-6)


def test_weighted_sources_are_combined_and_logged(tmp_path, gpt2_tok, make_llama):
    def one(prompts, completions):
        return [1.0] * len(completions)

    def length(prompts, completions):
        return [float(len(c)) for c in completions]

    tr = PPOTrainer(cfg(tmp_path), policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
                    reward=[(one, 2.0), (length, -0.5)], prompts=PROMPTS)
    m = tr.step()
    assert m["objective/score/one"] == 1.0
    assert m["objective/score"] == pytest.approx(2.0 - 0.5 * m["objective/score/length"], abs=1e-5)


def test_same_tokenizer_reward_model_reads_token_ids(tmp_path, gpt2_tok, make_llama):
    """Same tokenizer ⇒ the token path; the score equals the RM at the last real token of query+response."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tether.models.load import ensure_pad_token

    ensure_pad_token(gpt2_tok)
    torch.manual_seed(3)
    rm_model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(gpt2_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=gpt2_tok.pad_token_id)).eval()
    rm = RewardModelScorer(rm_model, gpt2_tok, policy_tokenizer=gpt2_tok)
    assert rm.shares_tokenizer
    tr = PPOTrainer(cfg(tmp_path), policy=make_llama(len(gpt2_tok)), tokenizer=gpt2_tok,
                    reward=RewardSource("rm", rm), prompts=PROMPTS)
    captured = {}
    orig = rm.score_rollout

    def spy(rollout):
        captured["rollout"] = rollout
        captured["scores"] = orig(rollout)
        return captured["scores"]

    rm.score_rollout = spy
    tr.step()
    ro = captured["rollout"]
    with torch.no_grad():
        for b in range(ro.query_response.shape[0]):
            real = ro.query_response[b][ro.attention_mask[b]]  # the same tokens with every pad removed
            alone = sequence_scores(rm_model, real.unsqueeze(0), torch.ones(1, real.numel(), dtype=torch.long))
            assert float(alone) == pytest.approx(float(captured["scores"][b]), abs=1e-5)
