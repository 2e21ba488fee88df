"""Time-to-quality of a finished PPO run (issue 14): the training time at which the held-out gain of a judge over the
SFT model first reaches a threshold (default: VADER, +0.10).

    PYTHONPATH=. .venv/bin/python benchmarks/time_to_quality.py runs/demo            # the demo's PPO stage
    PYTHONPATH=. .venv/bin/python benchmarks/time_to_quality.py runs/ppo --judge textblob --threshold 0.05

RUN is a PPO output directory (``metrics.jsonl`` and ``final/tether_config.yaml``) or a demo/pipeline directory with
one under ``ppo/``. The run must have evaluated held-out prompts during training (``monitor.eval_every`` > 0 and the
judge in ``monitor.judges``; the demo evaluates VADER every 10 updates). The gains are those `tether compare` uses
(``tether.compare.heldout_curve`` and ``time_to_quality``): ``eval/<judge>`` of each evaluation minus the SFT model's
``eval/<judge>`` under the same evaluation settings (prompts, seed, sampling). That SFT baseline is not in the run's
own records: the first call computes it from the run's SFT model (``policy`` of its config; about one held-out
evaluation of time) and caches it in ``RUN/sft_heldout.json`` with the settings it belongs to.

The time is the run's training time up to and including the update evaluated: the sum of ``time/rollout_s``,
``time/score_s`` and ``time/update_s`` of its updates. Model loading, checkpoints and the held-out evaluations
themselves are not in it (PPO's records hold no wall-clock time stamp). Evaluations every N updates make this an upper
bound to within N updates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

CACHE_NAME = "sft_heldout.json"


def ppo_dir(run: Path) -> Path:
    """The PPO output directory of ``run`` (itself, or its ``ppo/``)."""
    for d in (run, run / "ppo"):
        if (d / "metrics.jsonl").is_file():
            return d
    raise SystemExit(f"time_to_quality: {run}: no metrics.jsonl here or under ppo/ (a finished PPO or demo run "
                     "directory)")


def run_config(d: Path):
    """The PPOConfig the run recorded (``final/tether_config.yaml``, else the newest checkpoint's)."""
    import yaml

    from tether.config.ppo import PPOConfig

    found = [d / "final" / "tether_config.yaml", *sorted(d.glob("checkpoints/*/tether_config.yaml"))[::-1]]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        raise SystemExit(f"time_to_quality: {d}: no final/tether_config.yaml (is the run finished?)")
    return PPOConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def sft_baseline(d: Path, cfg) -> dict[str, float]:
    """The SFT model's ``eval/*`` under the run's held-out settings: from ``d/sft_heldout.json`` when it was made for
    these settings, else evaluated now (the SFT model is the run's ``policy``) and cached there."""
    from tether.compare import _heldout_key

    key = _heldout_key(cfg)
    cache = d / CACHE_NAME
    if cache.is_file():
        known = json.loads(cache.read_text(encoding="utf-8"))
        if known.get("settings") == key:
            return known["eval"]
    if cfg.monitor.eval_every <= 0:
        raise SystemExit(f"time_to_quality: {d}: the run evaluated no held-out prompts (monitor.eval_every = 0)")
    from tether.algos.parts import load_policy
    from tether.eval.heldout import ppo_heldout

    print(f"time_to_quality: evaluating the SFT model {cfg.policy} on the run's held-out prompts (cached in {cache})",
          file=sys.stderr, flush=True)
    policy, tok = load_policy(str(cfg.policy), pad_policy="add", progress=False)
    policy.eval()
    held = ppo_heldout(cfg, policy, tok, [], policy)
    base = held() if held is not None else {}
    cache.write_text(json.dumps({"settings": key, "sft": str(cfg.policy), "eval": base}, indent=1), encoding="utf-8")
    return base


def time_to_quality_of(records: list[dict[str, Any]], baseline: dict[str, float], judge: str,
                       threshold: float) -> tuple[Optional[dict[str, Any]], list[dict[str, Any]]]:
    """(the first evaluation whose gain reaches ``threshold`` or None, the whole held-out curve)."""
    from tether.compare import heldout_curve, time_to_quality

    curve = heldout_curve(records, baseline, [judge])
    return time_to_quality(curve, judge, threshold), curve


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a PPO output directory, or a demo/pipeline directory with ppo/")
    ap.add_argument("--judge", default="vader", help="the judge whose held-out gain is read (eval/<judge>)")
    ap.add_argument("--threshold", type=float, default=0.10, help="the gain over SFT to reach (default 0.10)")
    a = ap.parse_args(argv)

    from tether.engine.run_dir import read_jsonl

    d = ppo_dir(a.run)
    records = read_jsonl(d / "metrics.jsonl")
    cfg = run_config(d)
    if a.judge not in cfg.monitor.judges:
        raise SystemExit(f"time_to_quality: {d}: judge {a.judge!r} was not evaluated during training "
                         f"(monitor.judges = {list(cfg.monitor.judges)})")
    baseline = sft_baseline(d, cfg)
    if f"eval/{a.judge}" not in baseline:
        raise SystemExit(f"time_to_quality: {d / CACHE_NAME}: no eval/{a.judge} in the SFT baseline")
    hit, curve = time_to_quality_of(records, baseline, a.judge, a.threshold)
    if not curve:
        raise SystemExit(f"time_to_quality: {d / 'metrics.jsonl'}: no held-out evaluation with eval/{a.judge}")
    print(f"{d}: held-out {a.judge} gain over SFT ({baseline[f'eval/{a.judge}']:.3f}) per evaluation")
    for p in curve:
        print(f"  update {p['update']:4d}  {p['train_s']:8.1f} s of training  gain {p['gain'][a.judge]:+.3f}")
    if hit is None:
        best = max(curve, key=lambda p: p["gain"][a.judge])
        print(f"gain ≥ {a.threshold:+.2f}: not reached (best {best['gain'][a.judge]:+.3f} at update {best['update']})")
    else:
        print(f"gain ≥ {a.threshold:+.2f}: first at update {hit['update']}, {hit['train_s']:.1f} s of training "
              f"(rollout + scoring + update; loading and evaluations not counted), "
              f"{int(hit['sampled_tokens'])} sampled tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
