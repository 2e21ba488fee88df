"""PPO on its configured device, checked on the CPU: what a GPU run would break if a tensor were made on the wrong
device (a prompt batch, a reward list, a gathered statistic) or a model were left behind."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _trainers import PROMPTS, length_reward, make
from tether.algos import ppo as ppo_module
from tether.algos.parts import PPOParts
from tether.algos.ppo_trainer import place_parts
from tether.config.ppo import PPOConfig
from tether.engine.dist import resolve_device
from tether.rewards.base import RewardSource, combine_scores
from tether.rewards.reward_model import RewardModelScorer


def _tensors(obj) -> dict[str, torch.Tensor]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), torch.Tensor)}


def test_ppo_default_device_is_auto_and_auto_is_the_cpu_without_cuda(monkeypatch):
    assert PPOConfig().device == "auto"
    assert PPOConfig(device="cuda:1").device == "cuda:1"  # the spelling; the GPU is checked when the run starts
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_every_tensor_of_an_update_is_on_the_policy_device(tmp_path, gpt2_tok, make_llama, monkeypatch,
                                                           critic_mode):
    seen = {}
    orig = ppo_module.collect

    def spy(state, u):
        seen["scored"] = out = orig(state, u)
        return out

    monkeypatch.setattr(ppo_module, "collect", spy)
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), length_reward, device="auto",
              critic_mode=critic_mode)
    device = next(tr.policy.parameters()).device
    assert tr.dist.device == device
    for model in (tr.ref, tr.critic):
        assert {p.device for p in model.parameters()} == {device}
    tr.step()
    s = seen["scored"]
    tensors = {**{f"exp.{k}": v for k, v in _tensors(s.exp).items()},
               **{f"rollout.{k}": v for k, v in _tensors(s.rollout).items()},
               "gen_logprobs": s.gen_logprobs, "scores": s.scores, "kl": s.kl,
               **{f"parts.{k}": v for k, v in s.parts.items()}}
    assert {"exp.values", "exp.advantages", "rollout.query_response", "scores", "parts.length_reward"} <= set(tensors)
    wrong = {k: v.device for k, v in tensors.items() if v.device != device}
    assert not wrong, wrong


def test_rewards_come_back_on_the_requested_device():
    """A Python reward's list and a tensor a source returns elsewhere both land on the device asked for (the meta
    device stands in for a GPU: on the CPU it is the only other device there is)."""
    sources = [RewardSource("list", lambda p, c: [1.0, 2.0]),
               RewardSource("tensor", lambda p, c: torch.tensor([3.0, 4.0], dtype=torch.float64), weight=0.5)]
    total, parts = combine_scores(sources, ["a", "b"], ["x", "y"], device=torch.device("meta"))
    assert total.device.type == "meta" and {v.device.type for v in parts.values()} == {"meta"}
    total, parts = combine_scores(sources, ["a", "b"], ["x", "y"])
    assert total.device.type == "cpu" and total.tolist() == [2.5, 4.0]


def test_place_parts_moves_every_model_it_loaded(gpt2_tok, make_llama):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    policy, ref, critic = (make_llama(len(gpt2_tok) + 1, seed=s) for s in range(3))
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(gpt2_tok) + 1, hidden_size=32,
                                                    intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=4, num_key_value_heads=2, num_labels=1))
    scorer = RewardModelScorer(rm, gpt2_tok, policy_tokenizer=gpt2_tok)
    python = RewardSource("fn", length_reward)
    parts = PPOParts(policy=policy, tokenizer=gpt2_tok, reference=ref, critic=critic,
                     rewards=[RewardSource("rm", scorer), python], prompts=PROMPTS)
    place_parts(parts, torch.device("meta"))
    for model in (policy, ref, critic, rm):
        assert {p.device.type for p in model.parameters()} == {"meta"}
    assert scorer.device.type == "meta"
    assert python.fn is length_reward  # a Python function is left as it is
