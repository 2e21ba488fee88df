"""The critic's two layouts: a value head on the policy's trunk (default) and a separate value model."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from tether.config.ppo import PPOConfig
from tether.models.forward import causal_lm_logits, causal_lm_logits_and_hidden, check_shared_trunk
from _trainers import make_trainer


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_trunk_pass_gives_the_models_logits(gpt2_tok, make_llama, make_gpt2, arch):
    model = (make_llama if arch == "llama" else make_gpt2)(len(gpt2_tok), dtype=torch.float64)
    ids = torch.randint(0, len(gpt2_tok), (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: positions come from the mask in both paths
    logits, hidden = causal_lm_logits_and_hidden(model, ids, mask)
    torch.testing.assert_close(logits, causal_lm_logits(model, ids, mask), rtol=0, atol=1e-12)
    assert hidden.shape == (3, 7, model.config.hidden_size if arch == "llama" else model.config.n_embd)
    check_shared_trunk(model, ids[:1])


def test_shared_trunk_refuses_a_head_that_rescales_logits(gpt2_tok, make_llama):
    model = make_llama(len(gpt2_tok))
    model.register_forward_hook(lambda mod, inp, out: out.__setitem__("logits", out["logits"] * 2.0) or out)
    with pytest.raises(ValueError, match="critic_mode=shared"):
        check_shared_trunk(model, torch.arange(6).unsqueeze(0))


def test_shared_critic_sits_on_the_policy_trunk(tmp_path, gpt2_tok, make_llama):
    trainer = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), critic_mode="shared", num_updates=2)
    assert trainer.critic.trunk is trainer.policy.base_model
    head = {id(p) for p in trainer.critic.head.parameters()}
    assert {id(p) for g in trainer.optimizers["critic"].param_groups for p in g["params"]} == head
    assert not head & {id(p) for g in trainer.optimizers["policy"].param_groups for p in g["params"]}
    m = trainer.step()
    assert m["policy/first_minibatch_ratio_dev"] == 0.0 and m["value/loss"] > 0
    trainer.train()
    critic_dir = tmp_path / "run" / "final" / "critic"
    assert sorted(p.name for p in critic_dir.iterdir()) == ["value_head.safetensors"]  # the trunk is the policy's
    saved = load_file(str(critic_dir / "value_head.safetensors"))
    torch.testing.assert_close(saved["weight"], trainer.critic.head.weight.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_value_loss_reaches_the_policy_only_when_shared(tmp_path, gpt2_tok, make_llama, mode):
    """Same seed, vf_coef 0 vs 1: the policy's weights after one update differ exactly when the trunk is shared. (Two
    epochs: the fresh head starts at zero, so the value loss reaches the trunk once the head has taken a step.)"""
    weights = []
    for vf in (0.0, 1.0):
        tok = copy.deepcopy(gpt2_tok)  # each trainer adds its own pad token
        t = make_trainer(tmp_path / f"vf{vf}", tok, make_llama(len(tok) + 1), critic_mode=mode, vf_coef=vf,
                         num_ppo_epochs=2, lr=1e-3)
        t.step()
        weights.append(torch.cat([p.detach().flatten() for p in t.policy.parameters()]))
    same = torch.equal(weights[0], weights[1])
    assert same == (mode == "separate")


def test_shared_with_a_critic_directory_is_refused():
    for kw in ({"critic_mode": "shared"}, {}):  # the default is shared: the message says how to get a separate one
        with pytest.raises(ValueError, match="critic: a critic directory needs critic_mode=separate"):
            PPOConfig(critic="runs/rm", **kw)
    assert PPOConfig(critic="runs/rm", critic_mode="separate").critic == "runs/rm"


def test_the_default_trainer_has_no_second_trunk(tmp_path, gpt2_tok, make_llama):
    """PPOConfig's defaults (only the run's sizes set): the critic is a value head on the policy's trunk, so the
    models held are the policy and the reference only, and the critic's optimizer holds the head alone."""
    trainer = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), num_updates=1)
    assert trainer.cfg.critic_mode == "shared"
    assert trainer.critic.trunk is trainer.policy.base_model
    held = {id(p) for g in trainer.optimizers["critic"].param_groups for p in g["params"]}
    assert held == {id(p) for p in trainer.critic.head.parameters()}
    assert trainer.ref is not trainer.policy and trainer.critic.trunk is not trainer.ref.base_model


def test_shared_critic_learns_values(tmp_path, gpt2_tok, make_llama):
    """A constant reward: the value loss falls as the head learns it (policy lr tiny, critic lr large)."""
    t = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), reward=lambda p, c: [1.0] * len(c),
                     critic_mode="shared", lr=1e-7, critic_lr=1e-1, num_updates=8, value_clip=None, kl_coef=0.0)
    losses = [t.step()["value/loss"] for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_a_fresh_value_head_starts_at_zero(tmp_path, gpt2_tok, make_llama, mode):
    """Without a reward model to start from, the critic's head is zero (lm-human-preferences): V ≡ 0 on the first
    rollout, and the head moves from there."""
    t = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), critic_mode=mode, num_ppo_epochs=2,
                     critic_lr=1e-2)
    assert float(t.critic.head.weight.abs().max()) == 0.0 and float(t.critic.head.bias.abs().max()) == 0.0
    m = t.step()
    assert m["value/mean"] == 0.0
    assert float(t.critic.head.weight.abs().max()) > 0.0


def test_one_forward_gives_the_old_logprobs_and_the_shared_critics_values(gpt2_tok, make_llama):
    """The fused scoring pass of a shared critic equals, bit for bit, the two passes it replaces (the policy's
    log-probs and the critic's own forward) under the same micro-batching."""
    from tether.models.value import ValueModel
    from tether.records import Rollout
    from tether.rollout.generate import response_logprobs, response_logprobs_and_values
    from tether.rollout.score import rollout_values

    model = make_llama(len(gpt2_tok), dtype=torch.float64)
    critic = ValueModel.from_pretrained_model(model)
    with torch.no_grad():
        critic.head.weight.normal_()
        critic.head.bias.fill_(0.3)
    q, r = 4, 5
    ids = torch.randint(0, len(gpt2_tok), (3, q + r))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :2] = False  # a left-padded query
    mask[1, q + 3:] = False  # a response that ended early
    with torch.no_grad():
        lp, values = response_logprobs_and_values(model, critic.values_from_hidden, ids, mask, q, 0.7, 2)
        ro = Rollout(ids, mask, mask[:, q:], mask[:, -1], lp, ["p"] * 3, ["c"] * 3, q)
        expected = rollout_values(critic, ro, mask[:, q:], 2)
    assert torch.equal(lp, response_logprobs(model, ids, mask, q, 0.7, 2))
    assert torch.equal(torch.where(mask[:, q:], values, 0.0), expected)


def test_a_shared_critic_costs_no_second_trunk_pass_and_learns_the_same(tmp_path, gpt2_tok, make_llama, monkeypatch):
    """critic_mode=shared: the rollout's log-prob forward gives the old values too, so the trunk runs once per
    micro-batch over the rollout (no-grad), not twice; the update is the one the two passes gave (every metric and
    weight equal)."""
    import tether.algos.ppo as ppo_mod

    def run(name, fused):
        tok = copy.deepcopy(gpt2_tok)
        torch.manual_seed(0)
        t = make_trainer(tmp_path / name, tok, make_llama(len(tok) + 1), critic_mode="shared", critic_lr=1e-2)
        calls = []

        def count(mod, args, kwargs):
            ids = kwargs.get("input_ids")
            if not torch.is_grad_enabled() and ids is not None and kwargs.get("use_cache") is False:
                calls.append(ids.shape)

        t.policy.base_model.register_forward_pre_hook(count, with_kwargs=True)
        original = ppo_mod.generate
        if not fused:  # the old path: the critic's own forward scores the values
            monkeypatch.setattr(ppo_mod, "generate", lambda *a, value_head=None, **k: original(*a, **k))
        m = t.step()
        monkeypatch.setattr(ppo_mod, "generate", original)
        return m, calls, torch.cat([p.detach().flatten() for p in t.policy.parameters()])

    m1, fused_calls, w1 = run("fused", True)
    m2, two_pass_calls, w2 = run("two", False)
    # no-grad passes without a KV cache (the sampler's use one): 8 rows in micro-batches of 4
    assert len(fused_calls) == 2 and len(two_pass_calls) == 4
    assert m1["value/mean"] != 0.0 or m1["value/loss"] > 0
    for k in m1:
        if not k.startswith(("time/", "memory/", "perf/")):
            assert m1[k] == m2[k] or (m1[k] != m1[k] and m2[k] != m2[k]), k
    assert torch.equal(w1, w2)
