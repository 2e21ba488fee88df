"""What a reward model is given: a trained score head (a causal LM directory is refused by PPO, doctor and eval, but
is a valid starting point for RM training), and completions cut by the length limit scored without a fake EOS."""

from __future__ import annotations

import copy

import pytest
import torch

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig
from tether.data.preferences import encode_for_reward
from tether.errors import ModelError
from tether.models.load import ensure_pad_token, load_sequence_classifier
from tether.models.scalar import sequence_scores
from tether.rewards.base import RewardSource
from tether.rewards.reward_model import RewardModelScorer

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is"]
QUIET = {"preflight": False, "tensorboard": False, "report": False}


@pytest.fixture
def causal_dir(tmp_path, gpt2_tok, make_llama):
    """A causal LM saved with its tokenizer, as an SFT output is: no score head among its weights."""
    tok = copy.deepcopy(gpt2_tok)
    ensure_pad_token(tok)
    d = tmp_path / "sft"
    make_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=4,
                num_updates=1, num_ppo_epochs=1, progress=False, sample_every=0, monitor=QUIET)
    base.update(kw)
    return PPOConfig(**base)


def test_a_causal_lm_is_not_a_reward_model(tmp_path, causal_dir, gpt2_tok, make_llama):
    """The SFT output given as the reward: refused in one line by the loader and by the PPO trainer, instead of
    training for minutes against a randomly initialised head."""
    with pytest.raises(ModelError) as err:
        load_sequence_classifier(causal_dir)
    msg = str(err.value)
    assert "not a trained reward model" in msg and "LlamaForCausalLM" in msg and "score.weight" in msg
    assert "\n" not in msg
    with pytest.raises(ModelError, match="not a trained reward model"):
        PPOTrainer(_cfg(tmp_path), policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok, reward=str(causal_dir),
                   prompts=PROMPTS)


def test_doctor_fails_a_reward_model_without_a_head(causal_dir, gpt2_tok, make_llama):
    from tether.doctor import run_checks

    cfg = PPOConfig(rewards=[{"kind": "model", "path": str(causal_dir)}], response_length=4)
    res = {r.name: r for r in run_checks(cfg, policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
                                         prompts=PROMPTS, fast=True)}
    assert res["reward_last_token"].status == "fail"
    assert "not a trained reward model" in res["reward_last_token"].detail


def test_eval_refuses_a_reward_model_without_a_head(tmp_path, causal_dir):
    from tether.eval.compare import evaluate_policies

    with pytest.raises(ModelError, match="not a trained reward model"):
        evaluate_policies({"sft": str(causal_dir)}, PROMPTS, [], str(causal_dir), str(causal_dir), progress=False)


def test_reward_model_training_still_starts_from_a_causal_lm(causal_dir):
    from tether.algos.rm import load_reward_backbone

    model, head_is_new = load_reward_backbone(causal_dir)
    assert head_is_new and model.score.out_features == 1


def test_truncated_completions_are_scored_without_an_eos(tmp_path, gpt2_tok, bos_tok, make_llama):
    """A decoder reward model with its own tokenizer re-encodes each completion; one that hit the length limit must
    not gain an EOS (it would be scored as if it had ended). The trainer's scores equal the reward model on
    prompt + completion (+ EOS only when the completion ended)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    ensure_pad_token(bos_tok)
    torch.manual_seed(1)
    rm_model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(bos_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=bos_tok.pad_token_id)).eval()
    scorer = RewardModelScorer(rm_model, bos_tok, policy_tokenizer=gpt2_tok)
    assert not scorer.shares_tokenizer
    seen = {}
    real = scorer.score_rollout

    def spy(rollout):
        seen["rollout"], seen["scores"] = rollout, real(rollout)
        return seen["scores"]

    scorer.score_rollout = spy
    from conftest import eos_llama

    tr = PPOTrainer(_cfg(tmp_path, response_length=5, rollout_batch_size=8), policy=eos_llama(gpt2_tok, PROMPTS, 0.03),
                    tokenizer=gpt2_tok, reward=RewardSource("rm", scorer), prompts=PROMPTS)
    tr.step()
    ro = seen["rollout"]
    assert bool(ro.has_eos.any()) and not bool(ro.has_eos.all())
    eos = bos_tok.eos_token_id
    for i, (p, c, ended) in enumerate(zip(ro.prompts, ro.completions, ro.has_eos.tolist())):
        ids = encode_for_reward(bos_tok, p, c, style="decoder", max_length=512, ended=ended)
        assert (ids[-1] == eos) == ended and ids[0] == bos_tok.bos_token_id
        with torch.no_grad():
            want = float(sequence_scores(rm_model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))
        assert float(seen["scores"][i]) == pytest.approx(want, abs=1e-5)
        if not ended:  # the old encoding (an EOS always appended) scores something else
            closed = encode_for_reward(bos_tok, p, c, style="decoder", max_length=512, ended=True)
            with torch.no_grad():
                other = float(sequence_scores(rm_model, torch.tensor([closed]),
                                              torch.ones(1, len(closed), dtype=torch.long)))
            assert other != pytest.approx(want, abs=1e-5)
