"""Each alarm fires on a synthetic metric stream built to trigger it and stays silent on a healthy one."""

from __future__ import annotations

import pytest
from _streams import healthy, split

from tether.config.monitor import AlarmConfig
from tether.monitor.alarms import REMEDIES, THRESHOLD_FIELDS, AlarmChecker, AlarmError, replay, text_stats


def run(stream, cfg=None, warmup=0):
    records, comps = split(stream)
    checker = AlarmChecker(cfg or AlarmConfig(), warmup)
    for r, c in zip(records, comps):
        checker.check(r, c)
    return checker


def names(checker):
    return {a.name for a in checker.fired}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_runs_stay_silent(seed):
    checker = run(healthy(40, seed))
    assert checker.fired == [], [a.message for a in checker.fired]
    assert run(healthy(40, seed, critic=False, judges=False)).fired == []


def _plant(kind: str) -> list[dict]:
    s = healthy(30)
    for r in s:
        u = r["update"]
        if kind == "length_hacking":  # length climbs with the score
            r["response/length_mean"] = 10 + 1.0 * u
            r["objective/entropy"] = r["response/length_mean"] * 2.0
        elif kind == "repetition":
            if u > 20:
                r["_completions"] = [f"the {w} is great the {w} is great the {w} is great the {w}"
                                     for w in ("movie", "film", "show", "book", "song", "play")] + r["_completions"][:2]
        elif kind == "dominant_token":
            if u > 20:
                r["_completions"] = [c.split()[0] + " " + "!" * 25 for c in r["_completions"]]
        elif kind == "one_answer":
            if u > 20:
                r["_completions"] = [" a great movie."] * 8
        elif kind == "entropy_collapse":
            r["objective/entropy"] = r["response/length_mean"] * (2.0 if u < 10 else 0.2)
        elif kind == "kl_high":
            r["objective/kl"] = 0.6 * u
        elif kind == "kl_negative":
            r["objective/kl"] = -0.5 if u > 1 else 0.0
        elif kind == "clipfrac_high":
            r["policy/clipfrac"] = 0.5 if u > 25 else r["policy/clipfrac"]
        elif kind == "approx_kl_high":
            r["policy/approx_kl"] = 0.2 if u > 25 else r["policy/approx_kl"]
        elif kind == "value_not_learning":
            r["value/explained_variance"] = -0.1
        elif kind == "judge_falling":  # judge peaks at update 10 and falls while the proxy keeps rising
            if "eval/vader" in r:
                r["eval/vader"] = 0.3 - 0.02 * abs(u - 10)
        elif kind == "logprob_mismatch":  # e.g. a checkpoint's epsilon_cutoff leaking into the sampler
            r["rollout/logprob_mismatch_max"] = 10.0 if u > 25 else r["rollout/logprob_mismatch_max"]
        elif kind == "ratio_not_one":  # e.g. dropout left on in the training forward
            r["policy/first_minibatch_ratio_dev"] = 0.05 if u > 25 else 0.0
    return s


@pytest.mark.parametrize("kind", sorted(REMEDIES))
def test_each_alarm_fires_on_its_planted_failure(kind):
    checker = run(_plant(kind))
    fired = [a for a in checker.fired if a.name == kind]
    assert fired, f"{kind} did not fire; fired: {names(checker)}"
    a = fired[-1]
    assert a.metric and a.remedy == REMEDIES[kind] and a.update is not None
    msg = a.message
    assert kind in msg and a.metric in msg and "threshold" in msg and "\n" not in msg
    assert kind in THRESHOLD_FIELDS


def test_alarms_name_value_and_threshold():
    a = [x for x in run(_plant("kl_high")).fired if x.name == "kl_high"][0]
    assert a.metric == "objective/kl" and a.value > a.threshold == AlarmConfig().kl_max
    assert "raise kl_coef" in a.remedy
    j = [x for x in run(_plant("judge_falling")).fired if x.name == "judge_falling"][0]
    assert j.metric == "eval/vader" and "proxy" in j.detail


def test_thresholds_come_from_the_config():
    assert "kl_high" not in names(run(_plant("kl_high"), AlarmConfig(kl_max=100.0)))
    assert "clipfrac_high" in names(run(healthy(30), AlarmConfig(clipfrac_max=0.01)))
    assert run(_plant("kl_high"), AlarmConfig(enabled=False)).fired == []


def test_value_alarm_waits_for_the_critic_warmup():
    s = _plant("value_not_learning")[:10]
    assert "value_not_learning" in names(run(s))
    assert "value_not_learning" not in names(run(s, warmup=8))


def test_new_alarms_are_reported_once_per_episode():
    records, comps = split(_plant("kl_high"))
    checker = AlarmChecker()
    new_counts = []
    for r, c in zip(records, comps):
        checker.check(r, c)
        new_counts.append(len([a for a in checker.new if a.name == "kl_high"]))
    assert sum(new_counts) == 1 and len([a for a in checker.fired if a.name == "kl_high"]) > 1


def test_fatal_alarm_raises_one_line_error():
    records, comps = split(_plant("kl_negative"))
    checker = AlarmChecker(AlarmConfig(fatal=True))
    with pytest.raises(AlarmError) as err:
        for r, c in zip(records, comps):
            checker.check(r, c)
    assert "kl_negative" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError) and err.value.exit_code == 3


def test_text_stats():
    st = text_stats(["wow !!!!!!", "a b c a b c a b c"], n=3)
    assert st["text/top_token"] == "!" and 0.3 < st["text/top_token_share"] < 0.5
    assert st["text/repeat_ngram_share"] > 0.3 and st["text/distinct_share"] == 1.0
    assert text_stats([])["text/n"] == 0.0


def test_replay_over_a_finished_run_uses_sample_completions():
    records, comps = split(_plant("one_answer"))
    by_update = {r["update"]: c for r, c in zip(records, comps)}
    fired = replay(records, completions=by_update)
    assert "one_answer" in {a.name for a in fired}
    assert replay(records) == [] or "one_answer" not in {a.name for a in replay(records)}


@pytest.mark.parametrize("metric,value", [("rollout/logprob_mismatch_max", 0.3), ("policy/first_minibatch_ratio_dev",
                                                                                  0.05)])
def test_consistency_tolerance_follows_the_precision(metric, value):
    """bf16 rounding alone gives ~0.3 nats of sampler/trainer mismatch: the default tolerance of the two consistency
    alarms is tight for float32 forwards and loose under bf16 autocast; a configured value wins over both."""
    stream = healthy(10)
    stream[-1][metric] = value
    records, comps = split(stream)

    def fired(cfg, autocast):
        checker = AlarmChecker(cfg, 0, autocast)
        for r, c in zip(records, comps):
            checker.check(r, c)
        return {a.metric for a in checker.fired}

    assert metric in fired(AlarmConfig(), "none")
    assert metric not in fired(AlarmConfig(), "bfloat16")
    tight = AlarmConfig(logprob_mismatch_max=0.1, ratio_dev_max=0.01)
    assert metric in fired(tight, "bfloat16")
    assert AlarmConfig().logprob_tolerances("none") == (1e-3, 1e-3)
    assert AlarmConfig().logprob_tolerances("bfloat16") == (1.0, 0.2)
