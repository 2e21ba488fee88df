"""The pure parts of `tether compare`, on hand-made metrics.jsonl records: the held-out curve of a run (gains over the
SFT baseline, running training time and tokens), time-to-quality, the frontier averaged over seeds, a run's budget."""

from __future__ import annotations

import math

import pytest

from tether.compare import frontier, heldout_curve, run_totals, time_to_quality

BASE = {"eval/vader": 0.10, "eval/textblob": 0.05}


def rec(u, *, t=(1.0, 2.0, 3.0), tokens=64.0, length=5.0, **ev):
    r = {"update": u, "time/rollout_s": t[0], "time/score_s": t[1], "time/update_s": t[2],
         "rollout/sampled_tokens": tokens, "response/length_mean": length}
    r.update({f"eval/{k}": v for k, v in ev.items()})
    return r


RECORDS = [rec(1), rec(2, vader=0.15, textblob=0.05, kl=0.25), rec(3), rec(4, vader=0.22, textblob=0.30, kl=1.0),
           rec(5, t=(0.5, 0.5, 1.0), vader=0.31, textblob=0.0, kl=4.0)]


def test_heldout_curve_by_hand():
    curve = heldout_curve(RECORDS, BASE, ["vader", "textblob"])
    assert [p["update"] for p in curve] == [2, 4, 5]
    assert [p["train_s"] for p in curve] == [12.0, 24.0, 26.0]  # 6 s per update, the fifth 2 s
    assert [p["sampled_tokens"] for p in curve] == [128.0, 256.0, 320.0]
    assert [p["sqrt_kl"] for p in curve] == [0.5, 1.0, 2.0]
    assert curve[0]["gain"] == pytest.approx({"vader": 0.05, "textblob": 0.0})
    assert curve[1]["gain"] == pytest.approx({"vader": 0.12, "textblob": 0.25})
    assert curve[2]["gain"] == pytest.approx({"vader": 0.21, "textblob": -0.05})


def test_time_to_quality_is_the_first_evaluation_reaching_the_threshold():
    curve = heldout_curve(RECORDS, BASE, ["vader", "textblob"])
    assert time_to_quality(curve, "vader", 0.10) == {"update": 4, "train_s": 24.0, "sampled_tokens": 256.0}
    assert time_to_quality(curve, "vader", 0.04) == {"update": 2, "train_s": 12.0, "sampled_tokens": 128.0}
    assert time_to_quality(curve, "textblob", 0.2)["update"] == 4
    assert time_to_quality(curve, "vader", 0.5) is None


def test_frontier_averages_the_seeds_evaluated_at_each_update():
    a = [{"update": 2, "sqrt_kl": 0.5, "gain": {"vader": 0.1}}, {"update": 4, "sqrt_kl": 1.0, "gain": {"vader": 0.3}}]
    b = [{"update": 2, "sqrt_kl": 1.5, "gain": {"vader": -0.1}}]  # a time-limited seed that stopped earlier
    f = frontier([a, b], ["vader"])
    assert f[0] == {"update": 0, "sqrt_kl": 0.0, "gain": {"vader": 0.0}, "n_seeds": 2}
    assert (f[1]["update"], f[1]["sqrt_kl"], f[1]["n_seeds"]) == (2, 1.0, 2)
    assert f[1]["gain"]["vader"] == pytest.approx(0.0)
    assert (f[2]["update"], f[2]["sqrt_kl"], f[2]["gain"]["vader"], f[2]["n_seeds"]) == (4, 1.0, 0.3, 1)


def test_run_totals():
    t = run_totals(RECORDS, sequences_per_update=8)
    assert t == {"updates": 5, "train_s": 26.0, "sampled_tokens": 320, "response_tokens": 200, "completions": 40}
    assert math.isclose(run_totals([], 8)["train_s"], 0.0)
