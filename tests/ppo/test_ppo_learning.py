"""Learning tests: PPO and the critic-free estimators raise a dense reward on a tiny model; β controls the KL."""

from __future__ import annotations

import copy

import pytest

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is",
           "The weather today", "A good friend", "In the morning I", "The best thing about"]
R = 8


def run(tmp_path, tok, model, **overrides):
    def brevity(prompts, completions):
        """Dense reward in [0, 1]: 1 − (completion tokens)/R; the policy must learn when to emit EOS."""
        return [1.0 - len(tok(c)["input_ids"]) / R for c in completions]

    base = dict(output_dir=str(tmp_path), rollout_batch_size=16, micro_batch_size=16, response_length=R,
                num_updates=10, num_ppo_epochs=4, lr=3e-3, critic_lr=3e-3, lr_schedule="constant", kl_coef=0.0,
                progress=False, sample_every=0, seed=1, temperature=1.0)
    base.update(overrides)
    tr = PPOTrainer(PPOConfig(**base), policy=model, tokenizer=tok, reward=brevity, prompts=PROMPTS)
    return tr.train()


def _mean(hist, key, sl):
    vals = [m[key] for m in hist[sl]]
    return sum(vals) / len(vals)


def test_ppo_raises_a_dense_reward(tmp_path, gpt2_tok, make_eos_llama):
    hist = run(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS))
    first, last = _mean(hist, "objective/score", slice(0, 2)), _mean(hist, "objective/score", slice(-3, None))
    assert last > first + 0.25, (first, last)
    assert hist[-1]["response/length_mean"] < hist[0]["response/length_mean"]


# GRPO's group-normalised advantage is only a sign with groups of 2; with groups of 4 and lr 1e-3 it rises on each of
# seeds 0-2 (checked when the per-row sampler changed which completions are drawn)
@pytest.mark.parametrize("estimator,group,lr", [("grpo", 4, 1e-3), ("dr_grpo", 4, 1e-3), ("rloo", 2, 3e-3),
                                                ("reinforce_pp", 2, 3e-3), ("reinforce_pp_baseline", 2, 3e-3)])
def test_critic_free_estimators_raise_the_reward(tmp_path, gpt2_tok, make_eos_llama, estimator, group, lr):
    hist = run(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS), advantage=estimator, samples_per_prompt=group,
               rollout_batch_size=16 // group, lr=lr)
    first, last = _mean(hist, "objective/score", slice(0, 2)), _mean(hist, "objective/score", slice(-3, None))
    assert last > first + 0.2, (estimator, first, last)
    assert "value/loss" not in hist[-1]


def test_larger_kl_coef_keeps_policy_closer(tmp_path, gpt2_tok, make_eos_llama):
    kls = {}
    for beta in (0.0, 0.5):
        # lr 1e-3: at 3e-3 some seeds lock onto one answer in update 1, and then no β can act (checked on seeds 0-2)
        hist = run(tmp_path / str(beta), copy.deepcopy(gpt2_tok), make_eos_llama(gpt2_tok, PROMPTS), kl_coef=beta,
                   num_updates=6, lr=1e-3)
        kls[beta] = _mean(hist, "objective/kl", slice(-3, None))
    assert kls[0.5] < kls[0.0], kls
