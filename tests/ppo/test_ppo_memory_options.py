"""The memory options at the trainer level: `gradient_checkpointing` (fewer activations kept, the same gradients),
`micro_batch_size: auto` (the planner's choice, logged and recorded) and the out-of-memory retry (halve and redo:
the same update as a run at the halved size)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _trainers import length_reward, make

import tether.algos.ppo as ppo_mod
from tether.errors import ConfigError


def _first_step(monkeypatch, trainer):
    """Run one update; return (bytes of the distinct non-parameter storages autograd keeps inside the policy's and
    the critic's trunks during the first micro-batch's forward — the activations checkpointing drops, without the
    logits — and the gradients at the first optimizer step)."""
    st = trainer.state
    trunks = [st.policy.base_model] + ([st.critic.trunk] if st.critic is not None and not st.shared else [])
    params = {p.untyped_storage().data_ptr() for m in (st.policy, st.critic) for p in m.parameters()}
    held: dict[int, int] = {}
    active = {"on": False}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if active["on"] and ptr not in params:
            held[ptr] = t.untyped_storage().nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    handles = [h for m in trunks for h in (m.register_forward_pre_hook(lambda *a: hooks.__enter__()),
                                           m.register_forward_hook(lambda *a: hooks.__exit__(None, None, None)))]
    grads, calls = {}, {"n": 0}
    real_loss, real_step = ppo_mod.micro_batch_loss, ppo_mod.guarded_step

    def loss(state, *a, **k):
        calls["n"] += 1
        active["on"] = calls["n"] == 1
        try:
            return real_loss(state, *a, **k)
        finally:
            active["on"] = False

    def step(params, *a, **k):
        if not grads:
            grads.update({f"{name}.{i}": p.grad.detach().clone() for name, ps in params.items()
                          for i, p in enumerate(ps)})
        return real_step(params, *a, **k)

    monkeypatch.setattr(ppo_mod, "micro_batch_loss", loss)
    monkeypatch.setattr(ppo_mod, "guarded_step", step)
    try:
        trainer.step()
    finally:
        monkeypatch.undo()
        for h in handles:
            h.remove()
    return sum(held.values()), grads


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_ppo_gradient_checkpointing_keeps_gradients_and_saves_fewer_activations(tmp_path, gpt2_tok, make_llama,
                                                                                monkeypatch, lora):
    runs = {}
    for ckpt in (False, True):
        model = make_llama(len(gpt2_tok) + 1, layers=4, hidden=64)
        tr = make(tmp_path / str(ckpt), copy.deepcopy(gpt2_tok), model, length_reward, gradient_checkpointing=ckpt,
                  policy_lora=lora)
        runs[ckpt] = _first_step(monkeypatch, tr)
        assert not tr.policy.training  # grad_forward gave the eval mode back
    (full, g_full), (ckpt, g_ckpt) = runs[False], runs[True]
    assert 0 < ckpt < 0.5 * full, (ckpt, full)
    assert g_full and g_full.keys() == g_ckpt.keys()
    for name, g in g_full.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-6, atol=1e-6, msg=name)


def test_auto_micro_batch_picks_what_fits_logs_and_records_it(tmp_path, gpt2_tok, make_llama, monkeypatch, capsys):
    """With a budget between the estimated peaks of micro-batches 2 and 4, `auto` picks 2 (largest that fits with the
    20 % margin), says so, uses it and records it in metrics.jsonl; the device's real memory (tiny model) takes the
    whole minibatch; a budget below micro-batch 1 is refused in one line."""
    import tether.algos.autobatch as ab
    from tether.plan.memory import estimate_peak

    model = make_llama(len(gpt2_tok) + 1)
    probe = make(tmp_path / "probe", copy.deepcopy(gpt2_tok), copy.deepcopy(model), length_reward)
    models = ab.held_models(probe.cfg, probe.policy, probe.ref, probe.critic, probe.rewards)
    seq = probe.cfg.max_prompt_length + probe.cfg.response_length

    def peak(m):
        return estimate_peak(models, micro_batch=m, seq_len=seq, generation_batch=8, generation_len=seq,
                             loss_len=probe.cfg.response_length).peak

    assert peak(1) < peak(2) < peak(4)
    budget = int((peak(2) + peak(4)) / 2 / 0.8)
    monkeypatch.setattr(ab, "memory_budget", lambda device: budget)
    tr = make(tmp_path / "auto", copy.deepcopy(gpt2_tok), copy.deepcopy(model), length_reward,
              micro_batch_size="auto")
    assert "micro_batch_size=auto: 2 of minibatch 8" in capsys.readouterr().err
    sizes = []
    real = ppo_mod.micro_batch_loss
    monkeypatch.setattr(ppo_mod, "micro_batch_loss", lambda st, x, *a, **k: (sizes.append(len(x.logprobs)),
                                                                             real(st, x, *a, **k))[1])
    m = tr.step()
    assert set(sizes) == {2} and m["train/micro_batch_size"] == 2
    rows = [json.loads(x) for x in (tmp_path / "auto" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/micro_batch_size"] == 2
    monkeypatch.setattr(ab, "memory_budget", lambda device: int(peak(1) * 0.5))
    with pytest.raises(ConfigError, match="micro_batch_size=auto: even micro-batches of 1 need") as err:
        make(tmp_path / "small", copy.deepcopy(gpt2_tok), copy.deepcopy(model), length_reward,
             micro_batch_size="auto")
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    tr = make(tmp_path / "real", copy.deepcopy(gpt2_tok), copy.deepcopy(model), length_reward,
              micro_batch_size="auto")
    assert tr.plan.micro_batch_size == 8  # a 2-layer model fits whole on any machine that runs the tests


def test_out_of_memory_halves_the_micro_batch_and_gives_the_same_update(tmp_path, gpt2_tok, make_llama, monkeypatch,
                                                                        capsys):
    """A (fake) out-of-memory error at micro-batch 4 in update 1: the minibatch is redone at 2, which is kept, the
    halving is logged, and the weights after two updates equal a run at micro_batch_size=2 (float64)."""
    finals, logs = {}, {}
    real = ppo_mod.micro_batch_loss
    for name, micro in (("oom", 4), ("half", 2)):
        calls = {"n": 0}

        def loss(state, x, *a, _calls=calls, **k):
            if len(x.logprobs) == 4:
                _calls["n"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory (fake)")
            return real(state, x, *a, **k)

        monkeypatch.setattr(ppo_mod, "micro_batch_loss", loss)
        model = make_llama(len(gpt2_tok) + 1, dtype=torch.float64)
        tr = make(tmp_path / name, copy.deepcopy(gpt2_tok), model, length_reward, micro_batch_size=micro,
                  num_updates=2, num_minibatches=1, max_grad_norm=None, lr=1e-3, critic_lr=1e-3)
        ms = [tr.step(), tr.step()]
        assert [m["train/micro_batch_size"] for m in ms] == [2, 2]
        assert calls["n"] == (1 if name == "oom" else 0)  # halved once, then kept
        logs[name] = capsys.readouterr().err
        finals[name] = {**{f"p.{k}": v.clone() for k, v in tr.policy.state_dict().items()},
                        **{f"c.{k}": v.clone() for k, v in tr.critic.state_dict().items()}}
    assert "update 1: out of memory at micro_batch_size=4; redoing the minibatch with 2" in logs["oom"]
    assert "out of memory" not in logs["half"]
    for k, v in finals["half"].items():
        torch.testing.assert_close(finals["oom"][k], v, atol=1e-10, rtol=0, msg=k)


def test_out_of_memory_at_one_is_raised(tmp_path, gpt2_tok, make_llama, monkeypatch):
    monkeypatch.setattr(ppo_mod, "micro_batch_loss",
                        lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("fake")))
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), length_reward, micro_batch_size=1)
    with pytest.raises(torch.OutOfMemoryError):
        tr.step()
