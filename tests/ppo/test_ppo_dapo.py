"""DAPO's additions on the critic-free path (issue 15 point 2), through the trainer: overlong reward shaping and
dynamic sampling (drop groups with equal scores, refill from the next prompts, resume exactly)."""

from __future__ import annotations

import copy

import pytest
import torch
from _spies import RolloutSpy
from _trainers import PROMPTS, make

import tether.algos.ppo as ppo
from tether.algos.batching import prompt_stream
from tether.config.ppo import PPOConfig

CONST = set(PROMPTS[::2])  # prompts whose groups get one score for every completion (no signal)
TIMING = ("time/", "perf/")


def const_on_some(ro):
    """0.5 for every completion of a CONST prompt; the row number (distinct within every group) elsewhere."""
    return torch.tensor([0.5 if p in CONST else float(i) for i, p in enumerate(ro.prompts)])


def _dapo(tmp_path, tok, model, spy, name="run", **kw):
    base = dict(advantage="grpo", samples_per_prompt=2, rollout_batch_size=4, response_length=8, kl_coef=0.0,
                dynamic_sampling=True)
    base.update(kw)
    return make(tmp_path, copy.deepcopy(tok), model, spy, name=name, **base)


def expected_rounds(start: int, batch: int, rounds: int, const=CONST):
    """Reference of the refill rule: read the seeded prompt order from ``start``; each round samples as many new
    prompts as groups are missing. Returns (trained prompt indices, prompts consumed, refill groups, rounds)."""
    kept, pos, refill, done = [], start, 0, 0
    need = batch
    while True:
        idx = prompt_stream(pos, need, len(PROMPTS), 0)
        pos += need
        kept += [i for i in idx if PROMPTS[i] not in const]
        if len(kept) >= batch or done >= rounds:
            return kept, pos - start, refill, done
        need = batch - len(kept)
        refill += need
        done += 1


def test_overlong_penalty_changes_the_scores(tmp_path, gpt2_tok, make_eos_llama):
    """overlong_buffer=4 of response_length 8: the logged score is the reward plus −(ℓ − 4)/4 · overlong_penalty for
    completions longer than 4 tokens (ℓ from the very rollout), and objective/overlong_penalty is its mean."""
    out = {}
    for name, kw in {"off": {}, "on": dict(overlong_buffer=4, overlong_penalty=0.5)}.items():
        spy = RolloutSpy(lambda ro: torch.ones(len(ro.completions)))
        tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_eos_llama(gpt2_tok, PROMPTS, target_p=0.1), spy, name=name,
                  advantage="rloo", samples_per_prompt=2, rollout_batch_size=4, kl_coef=0.0, **kw)
        out[name] = (tr.step(), spy.rollouts[0].response_mask.sum(1).double())
    m_off, _ = out["off"]
    m_on, lengths = out["on"]
    assert "objective/overlong_penalty" not in m_off and m_off["objective/score"] == pytest.approx(1.0)
    want = -(lengths - 4).clamp(min=0) / 4 * 0.5
    assert float(want.min()) < 0, "some completion should run into the buffer"
    assert m_on["objective/overlong_penalty"] == pytest.approx(float(want.mean()))
    assert m_on["objective/score"] == pytest.approx(1.0 + float(want.mean()))


def test_overlong_options_are_validated():
    with pytest.raises(ValueError, match="overlong_buffer=9 must be <= response_length=8"):
        PPOConfig(response_length=8, overlong_buffer=9)
    with pytest.raises(ValueError, match="overlong_penalty"):
        PPOConfig(overlong_buffer=4, overlong_penalty=0)


def test_dynamic_sampling_refuses_a_critic():
    with pytest.raises(ValueError, match="dynamic_sampling: needs a group estimator .* advantage=gae learns from a "
                                         "critic"):
        PPOConfig(dynamic_sampling=True)
    with pytest.raises(ValueError, match="advantage=reinforce_pp has no group baseline"):
        PPOConfig(dynamic_sampling=True, advantage="reinforce_pp", samples_per_prompt=2)


@pytest.mark.parametrize("rounds", [0, 3])
def test_dynamic_sampling_drops_and_refills(tmp_path, gpt2_tok, make_eos_llama, rounds):
    """Groups of CONST prompts are dropped; the next prompts of the seeded order are sampled in their place (all
    rounds reach the reward: the spy sees them); the update trains on the groups with signal only, from a joined
    batch whose first minibatch still has ratio 1 exactly."""
    spy = RolloutSpy(const_on_some)
    tr = _dapo(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, target_p=0.1), spy, max_refill_rounds=rounds)
    res = ppo.ppo_update(tr.state, 0)
    m = res.metrics
    kept, consumed, refill, done = expected_rounds(0, 4, rounds)
    sampled = [p for ro in spy.rollouts for p in ro.prompts[::2]]
    assert sampled == [PROMPTS[i] for i in prompt_stream(0, consumed, len(PROMPTS), 0)]
    assert m["rollout/prompts_consumed"] == consumed and tr.state.cursor.position == consumed
    assert m["rollout/refill_groups"] == refill and m["rollout/refill_rounds"] == done
    assert m["rollout/dropped_groups"] == sum(PROMPTS[i] in CONST for i in prompt_stream(0, consumed, 8, 0))
    assert m["rollout/groups_trained"] == len(kept)
    trained = res.scored.rollout.prompts
    assert trained[::2] == [PROMPTS[i] for i in kept] and trained[1::2] == trained[::2]
    assert not CONST & set(trained)
    assert res.scored.exp.batch_size == 2 * len(kept)
    assert bool((res.scored.exp.advantages.abs().sum(1) > 0).all())  # every trained row carries signal
    assert m["policy/first_minibatch_ratio_dev"] == 0.0
    if rounds:
        assert refill > 0 and len(kept) == 4  # the refills did fill the batch
    else:
        assert len(kept) < 4  # short of groups: trains on what there is


def test_dynamic_sampling_without_signal_trains_on_the_first_round(tmp_path, gpt2_tok, make_eos_llama):
    """A reward that is constant everywhere: every round is dropped, the refills run out (3 rounds of 4 prompts) and
    the update falls back to the first round (zero advantages), logging groups_trained 0."""
    spy = RolloutSpy(lambda ro: torch.zeros(len(ro.completions)))
    tr = _dapo(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, target_p=0.1), spy, max_refill_rounds=3)
    m = tr.step()
    assert m["rollout/groups_trained"] == 0 and m["rollout/dropped_groups"] == 16
    assert m["rollout/prompts_consumed"] == 16 and m["rollout/refill_groups"] == 12
    assert len(spy.rollouts) == 4 and m["train/optimizer_steps"] > 0


def test_dynamic_sampling_resume_is_exact(tmp_path, gpt2_tok, make_eos_llama):
    """Three updates straight equal two updates, a checkpoint, a new trainer that resumes, and a third update: the
    same metrics (timings aside), the same prompt cursor — not 3·B, so it had to come from the checkpoint — and the
    same weights."""
    def model():
        return make_eos_llama(gpt2_tok, PROMPTS, target_p=0.1)

    kw = dict(num_updates=3, max_refill_rounds=2, checkpoint_every=1)
    a = _dapo(tmp_path, gpt2_tok, model(), RolloutSpy(const_on_some), name="a", **kw)
    want = [a.step() for _ in range(3)]
    b = _dapo(tmp_path, gpt2_tok, model(), RolloutSpy(const_on_some), name="b", **kw)
    b.step()
    b.step()
    b.save_checkpoint()
    cursor_at_2 = b.state.cursor.position
    c = _dapo(tmp_path, gpt2_tok, model(), RolloutSpy(const_on_some), name="b", **kw)
    assert c.update == 2 and c.state.cursor.position == cursor_at_2 != 2 * 4
    got = c.step()

    def strip(m):
        return {k: v for k, v in m.items() if not k.startswith(TIMING)}

    assert strip(got) == strip(want[2])
    assert c.state.cursor.position == a.state.cursor.position
    for (k, p), q in zip(a.policy.state_dict().items(), c.policy.state_dict().values()):
        assert torch.equal(p, q), k
