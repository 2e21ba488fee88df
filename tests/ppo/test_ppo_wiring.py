"""How the trainer wires the ops together: sampling from exactly softmax(logits/T) whatever the checkpoint's
generation config holds, the consistency alarms, GRPO's std ε, and the option combinations refused in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _spies import RolloutSpy, row_scores
from _trainers import PROMPTS, QUIET, SCORES, lengths, make

from tether import ops
from tether.config.base import build
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError


@pytest.mark.parametrize("setting", [
    {"epsilon_cutoff": 3e-5}, {"eta_cutoff": 0.5}, {"top_k": 3}, {"min_p": 0.2}, {"top_h": 0.5},
    {"repetition_penalty": 3.0}, {"sequence_bias": {(200,): 30.0}}, {"exponential_decay_length_penalty": (1, 4.0)},
    {"suppress_tokens": list(range(100))}, {"forced_eos_token_id": 5},
])
def test_sampling_ignores_the_checkpoints_logits_processors(tmp_path, gpt2_tok, make_llama, setting):
    """A checkpoint's generation_config (epsilon/eta cutoff, top-k/top-h/min-p, penalties, biases, suppressed or
    forced tokens …) must not reach the sampler: the log-probs it sampled with equal the tempered training forward,
    and the model's own generation config is left as it was."""
    model = make_llama(len(gpt2_tok) + 1)
    for k, v in setting.items():
        setattr(model.generation_config, k, v)
    before = model.generation_config.to_dict()
    tr = make(tmp_path, gpt2_tok, model, RolloutSpy(row_scores(SCORES)), temperature=0.7)
    m = tr.step()
    assert m["rollout/logprob_mismatch_max"] < 1e-4
    assert tr.policy.generation_config.to_dict() == before


def test_consistency_alarm_fires_on_a_sampler_trainer_mismatch(tmp_path, gpt2_tok, make_llama, monkeypatch):
    """The logprob_mismatch alarm watches rollout/logprob_mismatch_max: a training forward that forgets 1/T (a
    planted bug) fires it, with the float32 tolerance; a correct run stays silent."""
    import tether.rollout.generate as gen

    quiet_alarms = dict(QUIET)
    tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)),
              name="ok", monitor=quiet_alarms)
    tr.step()
    assert not (tmp_path / "ok" / "alarms.jsonl").exists() or "logprob_mismatch" not in (
        tmp_path / "ok" / "alarms.jsonl").read_text()
    real = ops.logprobs_from_logits
    monkeypatch.setattr(gen.ops, "logprobs_from_logits",
                        lambda logits, tokens, temperature=1.0, **kw: real(logits, tokens, 1.0, **kw))
    tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)),
              name="bad", temperature=0.5, monitor=quiet_alarms)
    m = tr.step()
    alarms = [json.loads(x) for x in (tmp_path / "bad" / "alarms.jsonl").read_text().splitlines()]
    fired = [a for a in alarms if a["name"] == "logprob_mismatch"]
    assert fired and fired[0]["value"] == pytest.approx(m["rollout/logprob_mismatch_max"])
    assert fired[0]["threshold"] == 1e-3


@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_grpo_std_eps_is_the_documented_option(tmp_path, gpt2_tok, make_eos_llama, eps):
    """grpo_std_eps: GRPO's advantage is (R − mean)/(std + ε) within each group; with scores 1e-5 apart the default ε
    turns a near-tie into ±0.7 advantages, a larger one damps it. Checked through policy/loss at ratio 1 (token mean of
    −A over the sampled lengths)."""
    near_ties = [1.0, 1.0 + 1e-5, 0.5, 0.5 - 1e-5]
    spy = RolloutSpy(row_scores(near_ties))
    m = make(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, 0.2), spy, advantage="grpo", samples_per_prompt=2,
             rollout_batch_size=4, grpo_std_eps=eps, kl_coef=0.0, response_length=10).step()
    L, s = lengths(spy.rollouts[0]), spy.scores[0].double().view(-1, 2)
    A = ((s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)).reshape(-1)
    assert float(A.abs().max()) == pytest.approx(0.7071 / (1 + eps / 7.07e-6), rel=2e-2)
    assert m["policy/loss"] == pytest.approx(float(-(A * L).sum() / L.sum()), rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("overrides,field", [
    ({"advantage": "reinforce_pp_baseline", "samples_per_prompt": 2, "whiten_rewards": True}, "whiten_rewards"),
    ({"advantage": "grpo", "samples_per_prompt": 2, "whiten_rewards": True}, "whiten_rewards"),
    ({"kl_in": "loss"}, "kl_estimator=k1"),
    ({"kl_in": "loss", "kl_estimator": "k1"}, "kl_estimator=k1"),
    ({"advantage": "rloo", "samples_per_prompt": 2, "critic_warmup_updates": 1}, "critic_warmup_updates"),
    ({"critic_warmup_updates": 20, "num_updates": 20}, "critic_warmup_updates"),
    ({"critic_warmup_updates": 3, "num_updates": 5, "warmup_updates": 2}, "warmup_updates"),
])
def test_invalid_combinations_are_refused_in_one_line(overrides, field):
    """Combinations that would silently train wrong: reward whitening before a critic-free estimator (the group
    baseline of reinforce_pp_baseline is in score units, so a group of identical completions got non-zero
    advantages), a k1 KL loss (zero expected gradient), a critic warm-up without a critic or without any policy
    update, and an lr warm-up longer than the policy's updates."""
    with pytest.raises(ConfigError) as err:
        build(PPOConfig, overrides)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_valid_combinations_still_build():
    build(PPOConfig, {"whiten_rewards": True})  # GAE
    build(PPOConfig, {"kl_in": "loss", "kl_estimator": "k3", "advantage": "grpo", "samples_per_prompt": 4})
    build(PPOConfig, {"kl_in": "loss", "kl_estimator": "k2"})
    build(PPOConfig, {"critic_warmup_updates": 2, "num_updates": 3})
