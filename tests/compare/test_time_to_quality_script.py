"""benchmarks/time_to_quality.py on a hand-made finished run directory: no model, the SFT baseline from the cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tether.compare import _heldout_key
from tether.config.base import dump
from tether.config.ppo import PPOConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "time_to_quality.py"


def _script():
    spec = importlib.util.spec_from_file_location("time_to_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_dir(tmp_path: Path, sft_vader: float, *, judges=("vader", "textblob")) -> Path:
    """A demo-like directory: ppo/ with 4 updates of 1 + 0.5 + 2.5 s and 100 sampled tokens each, held-out VADER
    0.20 at update 2 and 0.30 at update 4, the run's config, and the SFT baseline cached for its settings."""
    ppo = tmp_path / "demo" / "ppo"
    (ppo / "final").mkdir(parents=True)
    cfg = PPOConfig(policy=str(tmp_path / "sft"), rewards=[{"path": str(tmp_path / "rm")}], num_updates=4,
                    output_dir=str(ppo), monitor={"eval_every": 2, "eval_prompts": str(tmp_path / "heldout.jsonl"),
                                                  "judges": list(judges)})
    (ppo / "final" / "tether_config.yaml").write_text(yaml.safe_dump(dump(cfg)), encoding="utf-8")
    rows = []
    for u in range(1, 5):
        r = {"update": u, "time/rollout_s": 1.0, "time/score_s": 0.5, "time/update_s": 2.5,
             "rollout/sampled_tokens": 100.0}
        if u % 2 == 0:
            r.update({"eval/vader": 0.10 * u / 2 + 0.10, "eval/textblob": 0.0, "eval/kl": 0.1 * u})
        rows.append(r)
    (ppo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = {"eval/vader": sft_vader, "eval/textblob": 0.0}
    (ppo / "sft_heldout.json").write_text(json.dumps({"settings": _heldout_key(cfg), "eval": base}),
                                          encoding="utf-8")
    return tmp_path / "demo"


def test_first_evaluation_past_the_threshold(tmp_path, capsys):
    run = _run_dir(tmp_path, sft_vader=0.15)  # gains +0.05 (update 2), +0.15 (update 4)
    assert _script().main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "update    2       8.0 s of training  gain +0.050" in out
    assert "update    4      16.0 s of training  gain +0.150" in out
    assert "first at update 4, 16.0 s of training" in out
    assert "400 sampled tokens" in out


def test_threshold_and_judge_options(tmp_path, capsys):
    run = _run_dir(tmp_path, sft_vader=0.15)
    assert _script().main([str(run / "ppo"), "--threshold", "0.05"]) == 0  # a PPO directory itself; 0.05 reached
    assert "first at update 2, 8.0 s of training" in capsys.readouterr().out
    assert _script().main([str(run), "--judge", "textblob"]) == 0
    assert "not reached (best +0.000 at update 2)" in capsys.readouterr().out


def test_not_reached(tmp_path, capsys):
    run = _run_dir(tmp_path, sft_vader=0.25)  # gains −0.05, +0.05
    assert _script().main([str(run)]) == 0
    assert "gain ≥ +0.10: not reached (best +0.050 at update 4)" in capsys.readouterr().out


def test_refusals_are_one_line(tmp_path):
    mod = _script()
    with pytest.raises(SystemExit, match="no metrics.jsonl here or under ppo/"):
        mod.main([str(tmp_path)])
    run = _run_dir(tmp_path, sft_vader=0.15, judges=("textblob",))
    with pytest.raises(SystemExit, match=r"judge 'vader' was not evaluated during training"):
        mod.main([str(run)])


def test_a_cache_for_other_settings_is_not_used(tmp_path, monkeypatch):
    """A baseline cached under other held-out settings is recomputed (here: the SFT evaluation is replaced by a stub
    that records that it was asked), never read."""
    mod = _script()
    run = _run_dir(tmp_path, sft_vader=0.15)
    cache = run / "ppo" / "sft_heldout.json"
    cache.write_text(json.dumps({"settings": "other", "eval": {"eval/vader": -9.0}}), encoding="utf-8")
    asked = []

    import tether.algos.parts as parts
    import tether.eval.heldout as heldout

    monkeypatch.setattr(parts, "load_policy", lambda *a, **k: (asked.append(a[0]) or _Eval(), None))
    monkeypatch.setattr(heldout, "ppo_heldout", lambda *a, **k: (lambda: {"eval/vader": 0.15, "eval/textblob": 0.0}))
    cfg = mod.run_config(run / "ppo")
    assert mod.sft_baseline(run / "ppo", cfg) == {"eval/vader": 0.15, "eval/textblob": 0.0}
    assert asked == [str(tmp_path / "sft")]
    assert json.loads(cache.read_text())["settings"] == _heldout_key(cfg)


class _Eval:
    def eval(self):
        return self
