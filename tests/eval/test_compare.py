"""`tether eval`'s statistics: the paired difference and the win rate of each policy over the baseline, per metric,
computed from the very completions it scored, and shown in the table."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture
def two_policies(tmp_path, make_llama, gpt2_tok):
    dirs = {}
    for name, seed in (("sft", 0), ("ppo", 1)):
        d = tmp_path / name
        make_llama(len(gpt2_tok) + 1, seed=seed).save_pretrained(d)
        copy.deepcopy(gpt2_tok).save_pretrained(d)
        dirs[name] = str(d)
    return dirs


def test_win_rate_per_metric_matches_the_samples(two_policies):
    from tether.eval.compare import evaluate_policies, format_table

    prompts = ["The movie was", "I think that", "Once upon a time", "My favourite food is", "The film", "Today"]
    res = evaluate_policies(two_policies, prompts, [], None, two_policies["sft"], n_samples=2, response_length=6,
                            micro_batch_size=4, progress=False)
    a, b = res["samples"]["sft"], res["samples"]["ppo"]
    for m in ("tokens", "kl"):
        pairs = [(x[m], y[m]) for x, y in zip(a, b)]
        want = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x, y in pairs) / len(pairs)
        win = res["paired"]["ppo"][m]["win_rate"]
        assert win["mean"] == pytest.approx(want) and win["lo"] <= win["mean"] <= win["hi"]
    table = format_table(res)
    assert "ppo>sft win rate" in table.splitlines()[0]
