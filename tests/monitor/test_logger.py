"""RunLogger (TensorBoard scalars and sample tables, alarms once per episode, fatal alarms, W&B on request, the report
at close), HeldOutEvaluator on a tiny model with a real tokenizer, and BestTracker."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from _streams import healthy, split

from tether.config.monitor import AlarmConfig, MonitorConfig
from tether.errors import ConfigError
from tether.monitor.alarms import AlarmError
from tether.eval.heldout import BestTracker, HeldOutEvaluator, default_best_metric
from tether.monitor.logger import RunLogger, sample_table_markdown


def _feed(logger, stream, every=5):
    records, comps = split(stream)
    results = []
    for r, c in zip(records, comps):
        rows = None
        if r["update"] % every == 0:
            rows = [{"update": r["update"], "prompt": f"p{i}", "completion": x, "score": 0.5, "rm": 0.5}
                    for i, x in enumerate(c[:3])]
        results.append(logger.on_update(r, samples=rows, completions=c))
    return results


def test_tensorboard_scalars_and_sample_tables(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, MonitorConfig(report=False), run_config={"kl_coef": 0.05})
    results = _feed(logger, healthy(10))
    assert all(r.alarms == [] for r in results)
    assert {"text/repeat_ngram_share", "text/top_token_share", "text/distinct_share"} <= set(results[-1].metrics)
    assert logger.close() is None
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    assert {"objective/score", "objective/kl", "policy/clipfrac", "text/distinct_share"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("objective/score")] == list(range(1, 11))
    assert any(t.startswith("samples") for t in tags["tensors"])
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["config"] == {"kl_coef": 0.05} and "torch" in info["versions"]
    assert not (tmp_path / "alarms.jsonl").exists()


def test_alarms_warn_once_and_go_to_alarms_jsonl(tmp_path, capsys):
    s = healthy(12)
    for r in s:
        r["objective/kl"] = 1.5 * r["update"]
    logger = RunLogger(tmp_path, MonitorConfig(report=False, tensorboard=False))
    results = _feed(logger, s)
    assert any(a.name == "kl_high" for a in results[-1].alarms)
    assert logger.postfix()["alarm"] == "kl_high" and "kl" in logger.postfix()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 1 and err[0].startswith("tether: warning: update 7: kl_high: objective/kl")
    lines = (tmp_path / "alarms.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["name"] == "kl_high"


def test_resume_carries_alarm_history(tmp_path, capsys):
    s = healthy(12)
    for r in s:
        r["objective/kl"] = 1.5 * r["update"]
    records, comps = split(s)
    first = RunLogger(tmp_path, MonitorConfig(report=False, tensorboard=False))
    for r in records[:9]:
        first.on_update(r)
    assert len((tmp_path / "alarms.jsonl").read_text().splitlines()) == 1
    again = RunLogger(tmp_path, MonitorConfig(report=False, tensorboard=False))
    again.resume(records[:9])
    for r in records[9:]:
        again.on_update(r)
    assert len((tmp_path / "alarms.jsonl").read_text().splitlines()) == 1  # still the same episode: no new warning
    assert capsys.readouterr().err.count("kl_high") == 1


def test_fatal_alarm_stops_with_report(tmp_path):
    pytest.importorskip("matplotlib")
    s = healthy(12)
    for r in s:
        r["policy/clipfrac"] = 0.9 if r["update"] > 3 else 0.05
    cfg = MonitorConfig(tensorboard=False, alarms=AlarmConfig(fatal=True))
    logger = RunLogger(tmp_path, cfg, quiet=True)
    records, comps = split(s)
    for r in records[:3]:
        logger.on_update(r)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    with pytest.raises(AlarmError, match="clipfrac_high"):
        logger.on_update(records[3])
    assert (tmp_path / "report.html").is_file() and logger.closed


def test_report_written_at_close(tmp_path):
    pytest.importorskip("matplotlib")
    logger = RunLogger(tmp_path, MonitorConfig(tensorboard=False))
    records, _ = split(healthy(4))
    for r in records:
        logger.on_update(r)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path = logger.close()
    assert path == tmp_path / "report.html" and "plot-score" in path.read_text()
    assert logger.close() is None  # idempotent


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "trackio"])
def test_a_tracker_requested_but_missing_is_a_config_error_naming_the_extra(tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)
    with pytest.raises(ConfigError, match=rf"^monitor.report_to: {tracker} needs the `{tracker}` package.*"
                                          r"pip install 'tether\[trackers\]'"):
        RunLogger(tmp_path, MonitorConfig(report_to=[tracker]))
    if tracker == "wandb":  # the shorthand too
        with pytest.raises(ConfigError, match="wandb needs"):
            RunLogger(tmp_path, MonitorConfig(wandb=True))
    assert list(tmp_path.iterdir()) == []


def test_sample_table_markdown_escapes_pipes():
    md = sample_table_markdown([{"update": 1, "prompt": "a|b", "completion": "x\ny", "score": 0.123456}])
    assert md.splitlines()[0] == "| prompt | completion | score |" and "a\\|b" in md and "x y" in md and "0.1235" in md


# ------------------------------------------------------------------------------------------ held-out evaluation


@pytest.fixture
def tiny(make_llama, gpt2_tok):
    gpt2_tok.add_special_tokens({"pad_token": "<|pad|>"})
    gpt2_tok.padding_side = "left"
    return make_llama(len(gpt2_tok)), gpt2_tok


def test_heldout_evaluator_scores_proxy_judges_and_kl(tiny):
    import copy

    from tether.rewards.base import RewardSource

    policy, tok = tiny
    n_words = RewardSource("words", lambda p, c: [float(len(x.split())) for x in c])

    def shouty(texts):
        return [float(sum(ch.isupper() for ch in t)) for t in texts]

    ev = HeldOutEvaluator(["The movie was", "I think that", "Today the weather"], tok, rewards=[n_words],
                          judges=[shouty], reference=copy.deepcopy(policy), response_length=6, micro_batch_size=2)
    before = torch.get_rng_state()
    m1 = ev(policy)
    assert torch.equal(torch.get_rng_state(), before)  # training randomness untouched
    assert {"eval/proxy", "eval/proxy/words", "eval/shouty", "eval/kl", "eval/length_mean", "eval/n"} <= set(m1)
    assert m1["eval/n"] == 3 and abs(m1["eval/kl"]) < 1e-4 and m1["eval/proxy"] == m1["eval/proxy/words"]
    assert ev(policy) == m1  # fixed seed: only the policy changes the numbers
    assert len(ev.last_rows) == 3 and "shouty" in ev.last_rows[0]
    greedy = HeldOutEvaluator(["The movie was"], tok, judges=[shouty], greedy=True, response_length=4)(policy)
    assert "eval/kl" not in greedy and "eval/shouty" in greedy


def test_heldout_evaluator_refuses_reserved_or_empty(tiny):
    policy, tok = tiny

    def kl(texts):
        return [0.0] * len(texts)

    with pytest.raises(ConfigError, match="reserved"):
        HeldOutEvaluator(["x"], tok, judges=[kl])
    with pytest.raises(ConfigError, match="empty"):
        HeldOutEvaluator([], tok)


def test_named_judge(tiny):
    pytest.importorskip("vaderSentiment")
    policy, tok = tiny
    out = HeldOutEvaluator(["The movie was"], tok, judges=["vader"], response_length=4)(policy)
    assert -1.0 <= out["eval/vader"] <= 1.0


def test_best_tracker():
    t = BestTracker("eval/vader", "max")
    assert t.update({"update": 5}) is False
    assert t.update({"update": 5, "eval/vader": 0.1}) and t.best_update == 5
    assert not t.update({"update": 10, "eval/vader": 0.05})
    assert t.update({"update": 15, "eval/vader": 0.2}) and t.best == 0.2 and t.best_update == 15
    low = BestTracker("eval/kl", "min")
    assert low.update({"eval/kl": 3.0}) and low.update({"eval/kl": 1.0}) and not low.update({"eval/kl": 2.0})
    state = t.state_dict()
    t2 = BestTracker("eval/vader")
    t2.load_state_dict(state)
    assert not t2.update({"eval/vader": 0.15})
    assert default_best_metric(["vader", "afinn"]) == "eval/vader" and default_best_metric([]) == "eval/proxy"
    with pytest.raises(ValueError):
        BestTracker("x", "up")
