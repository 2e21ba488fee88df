"""PPO-level seeding of the sampler (issue 13): a row's completion is a function of (seed, update, prompt index,
sample index), not of micro-batching or of where the prompt sits in the rollout."""

from __future__ import annotations

import copy

import pytest
from _spies import RolloutSpy, row_scores
from _trainers import PROMPTS, SCORES, make

import tether.algos.ppo as ppo


def _completions(tmp_path, tok, model, name, monkeypatch=None, order=None, **overrides):
    """{(prompt, sample k): (response ids, completion)} of update 1."""
    spy = RolloutSpy(row_scores(SCORES))
    if order is not None:
        real = ppo.prompt_indices
        monkeypatch.setattr(ppo, "prompt_indices", lambda *a: [real(*a)[j] for j in order])
    tr = make(tmp_path, copy.deepcopy(tok), copy.deepcopy(model), spy, name=name, rollout_batch_size=4,
              samples_per_prompt=2, advantage="grpo", response_length=10, temperature=0.9, **overrides)
    tr.step()
    ro = spy.rollouts[0]
    out = {}
    for row, (prompt, text) in enumerate(zip(ro.prompts, ro.completions)):
        k = row % 2
        out[(prompt, k)] = (ro.responses[row][ro.response_mask[row]].tolist(), text)
    return out


def test_update_completions_ignore_micro_batches_and_row_order(tmp_path, gpt2_tok, make_eos_llama, monkeypatch):
    """Update 1 draws the same completion for each (prompt, sample) with micro_batch_size 1 and 4, and with the
    rollout's prompts in reverse order (the prompt indices unchanged); another run seed draws others."""
    model = make_eos_llama(gpt2_tok, PROMPTS, target_p=0.15)
    base = _completions(tmp_path, gpt2_tok, model, "mb4", micro_batch_size=4)
    assert len(base) == 8 and len({ids for ids, _ in ((tuple(v[0]), 0) for v in base.values())}) > 1
    assert _completions(tmp_path, gpt2_tok, model, "mb1", micro_batch_size=1) == base
    assert _completions(tmp_path, gpt2_tok, model, "rev", monkeypatch, order=[3, 2, 1, 0], micro_batch_size=4) == base
    monkeypatch.undo()
    other = _completions(tmp_path, gpt2_tok, model, "seed1", micro_batch_size=4, seed=1)
    shared = set(other) & set(base)
    assert not shared or any(other[k] != base[k] for k in shared)


@pytest.mark.parametrize("k", [0, 1])
def test_samples_of_one_prompt_differ(tmp_path, gpt2_tok, make_eos_llama, k):
    """The samples of a group have their own seeds (sample index): a group is not one completion repeated."""
    model = make_eos_llama(gpt2_tok, PROMPTS, target_p=0.05)
    out = _completions(tmp_path, gpt2_tok, model, f"g{k}", micro_batch_size=4, seed=k)
    prompts = {p for p, _ in out}
    assert any(out[(p, 0)] != out[(p, 1)] for p in prompts)
