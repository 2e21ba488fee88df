"""`tether eval`'s statistics: per policy and metric the mean with an interval over prompts (and seeds for a policy
given as several runs), the paired-per-prompt difference and the win rate over the baseline, each recomputed here
from the very completions it scored, and shown in the table; ``tether eval`` with a list of run directories."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tether.eval.stats import prompt_bootstrap_ci, prompt_bootstrap_diff

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is", "The film", "Today"]


@pytest.fixture
def policies(tmp_path, make_llama, gpt2_tok):
    dirs = {}
    for name, seed in (("sft", 0), ("ppo", 1), ("ppo_seed2", 2)):
        d = tmp_path / name
        make_llama(len(gpt2_tok) + 1, seed=seed).save_pretrained(d)
        copy.deepcopy(gpt2_tok).save_pretrained(d)
        dirs[name] = str(d)
    return dirs


def _by_prompt(rows, metric, k):
    """``{(run, prompt index): [values]}`` from the sample rows, in the order they were sampled."""
    out: dict = {}
    seen: dict = {}
    for r in rows:
        j = seen.get(r["run"], 0)
        seen[r["run"]] = j + 1
        out.setdefault((r["run"], j // k), []).append(r[metric])
    return out


def test_statistics_are_over_prompts_and_match_the_samples(policies):
    from tether.eval.compare import evaluate_policies, format_table

    two = {"sft": policies["sft"], "ppo": policies["ppo"]}
    res = evaluate_policies(two, PROMPTS, [], None, two["sft"], n_samples=2, response_length=6, micro_batch_size=4,
                            progress=False)
    assert res["resampled"] == "prompts"
    a, b = res["samples"]["sft"], res["samples"]["ppo"]
    for m in ("tokens", "kl"):
        ga, gb = _by_prompt(a, m, 2), _by_prompt(b, m, 2)
        # win rate: every pair of the two policies' completions of the same prompt
        pairs = [(x, y) for p in range(len(PROMPTS)) for x in ga[(0, p)] for y in gb[(0, p)]]
        want = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x, y in pairs) / len(pairs)
        win = res["paired"]["ppo"][m]["win_rate"]
        assert win["mean"] == pytest.approx(want) and win["lo"] <= win["mean"] <= win["hi"]
        # means and intervals: those of the (runs, prompts, completions) arrays of the samples
        xa = np.array([[ga[(0, p)] for p in range(len(PROMPTS))]], dtype=float)
        xb = np.array([[gb[(0, p)] for p in range(len(PROMPTS))]], dtype=float)
        assert res["policies"]["ppo"][m]["mean"] == pytest.approx(xb.mean())
        assert tuple(res["policies"]["ppo"][m][k] for k in ("mean", "lo", "hi")) == pytest.approx(
            tuple(prompt_bootstrap_ci(xb, seed=0)))
        d = res["paired"]["ppo"][m]
        assert (d["mean"], d["lo"], d["hi"]) == pytest.approx(tuple(prompt_bootstrap_diff(xa, xb, seed=0)))
        assert d["n_prompts"] == len(PROMPTS) and res["policies"]["ppo"][m]["n"] == 2 * len(PROMPTS)
    table = format_table(res)
    assert "ppo>sft win rate" in table.splitlines()[0]
    assert "resampling prompts: all completions of a prompt together" in table


def test_a_policy_given_as_several_runs_resamples_seeds(policies):
    from tether.eval.compare import evaluate_policies, format_table

    runs = {"sft": policies["sft"], "ppo": [policies["ppo"], policies["ppo_seed2"]]}
    res = evaluate_policies(runs, PROMPTS, [], None, policies["sft"], n_samples=1, response_length=6,
                            micro_batch_size=4, progress=False)
    assert res["resampled"] == "runs × prompts"
    rows = res["samples"]["ppo"]
    assert [r["run"] for r in rows] == [0] * len(PROMPTS) + [1] * len(PROMPTS)
    stats = res["policies"]["ppo"]["tokens"]
    assert stats["n_runs"] == 2 and stats["n"] == 2 * len(PROMPTS)
    x = np.array([[[r["tokens"]] for r in rows[:len(PROMPTS)]], [[r["tokens"]] for r in rows[len(PROMPTS):]]],
                 dtype=float)
    assert (stats["mean"], stats["lo"], stats["hi"]) == pytest.approx(tuple(prompt_bootstrap_ci(x, seed=0)))
    assert res["paired"]["ppo"]["kl"]["n_runs"] == [1, 2]
    # the run with seed 2 is a different model from seed 1: its completions differ
    assert [r["completion"] for r in rows[:len(PROMPTS)]] != [r["completion"] for r in rows[len(PROMPTS):]]
    assert "resampling runs × prompts" in format_table(res)


def test_tether_eval_takes_a_list_of_run_directories(policies, tmp_path, capsys):
    from tether.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "ev"
    argv = ["eval", f"policies={{sft: {policies['sft']}, ppo: [{policies['ppo']}, {policies['ppo_seed2']}]}}",
            f"reference={policies['sft']}", f"prompts={prompts}", "judges=[]", "response_length=4",
            f"output_dir={out}"]
    assert main(argv) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["resampled"] == "runs × prompts" and res["policies"]["ppo"]["kl"]["n_runs"] == 2
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3 * len(PROMPTS)
    bad = argv[:1] + [f"policies={{sft: {policies['sft']}, ppo: [{policies['ppo']}, {tmp_path / 'nope'}]}}"] + \
        argv[2:]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope: policy 'ppo' is not a model directory" in err
    assert main(argv[:1] + ["policies={sft: [], ppo: x}"] + argv[2:]) == 2
    assert "policies.sft: an empty list of run directories" in capsys.readouterr().err
