"""Synthetic per-update metric streams: one healthy run, and the same run with one failure planted in it."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["the", "film", "was", "a", "quiet", "story", "about", "two", "friends", "who", "travel", "north", "and",
         "find", "an", "old", "house", "by", "lake", "with", "warm", "light", "music", "plays", "slowly"]


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def healthy(n: int = 30, seed: int = 0, critic: bool = True, judges: bool = True) -> list[dict]:
    """A run going well: score and KL rise slowly, length and entropy per token stay put, small steps, a critic that
    learns, held-out judges rising with the proxy every 5 updates, diverse completions (``_completions``)."""
    rng = random.Random(seed)
    out = []
    for u in range(1, n + 1):
        length = 12 + rng.gauss(0, 1.0)
        score = -0.5 + 0.03 * u + rng.gauss(0, 0.05)
        kl = 0.0 if u == 1 else 0.1 * u + rng.gauss(0, 0.05)
        rec = {
            "update": u, "objective/score": score, "objective/score/rm": score, "objective/kl": kl,
            "objective/kl_coef": 0.05, "objective/rlhf_reward": score - 0.05 * kl,
            "objective/entropy": length * (2.0 + rng.gauss(0, 0.05)), "response/length_mean": length,
            "response/eos_fraction": 0.8, "rollout/logprob_mismatch_max": 1e-5,
            "policy/first_minibatch_ratio_dev": 0.0,
            "time/rollout_s": 1.0 + rng.random() * 0.1, "time/score_s": 0.2, "time/update_s": 2.0,
            "perf/tokens_per_s": 40 + rng.random(), "lr/policy": 1e-5 * (1 - (u - 1) / n),
            "policy/loss": rng.gauss(0, 0.01), "policy/clipfrac": abs(0.05 + rng.gauss(0, 0.01)),
            "policy/approx_kl": abs(0.005 + rng.gauss(0, 0.001)), "policy/ratio_mean": 1.0, "policy/ratio_max": 1.3,
            "_completions": [sentence(rng) for _ in range(8)],
        }
        if critic:
            rec.update({"value/explained_variance": min(0.8, 0.1 + 0.05 * u), "value/loss": 1.0 / u,
                        "value/clipfrac": 0.1, "value/mean": score})
        if judges and u % 5 == 0:
            rec.update({"eval/proxy": -0.4 + 0.03 * u, "eval/proxy/rm": -0.4 + 0.03 * u,
                        "eval/vader": 0.1 + 0.01 * u, "eval/afinn": 0.05 + 0.005 * u, "eval/kl": 0.09 * u,
                        "eval/length_mean": 12.0, "eval/n": 16.0})
        out.append(rec)
    return out


def split(stream: list[dict]) -> tuple[list[dict], list[list[str]]]:
    """(metric records without the completions, the completions of each update)."""
    return [{k: v for k, v in r.items() if k != "_completions"} for r in stream], [r["_completions"] for r in stream]


def write_run(d: Path, stream: list[dict], *, samples: bool = True, config: bool = True) -> Path:
    """A run directory as PPOTrainer writes it: metrics.jsonl, samples.jsonl (every 5 updates), final config."""
    d.mkdir(parents=True, exist_ok=True)
    records, comps = split(stream)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if samples:
        rows = []
        for r, cs in zip(records, comps):
            if r["update"] == 1 or r["update"] % 5 == 0:
                rows += [{"update": r["update"], "prompt": f"Prompt <{i}> & more", "completion": c,
                          "score": r["objective/score"], "rm": r["objective/score"]} for i, c in enumerate(cs[:4])]
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config:
        (d / "final").mkdir(exist_ok=True)
        (d / "final" / "tether_config.yaml").write_text("policy: runs/sft\nkl_coef: 0.05\nnum_updates: 30\n")
    return d


def pipeline_dir(tmp_path):
    """A pipeline run directory: a PPO run with SFT and RM stages and `tether eval` results."""
    root = tmp_path / "demo"
    write_run(root / "ppo", healthy(12, judges=False))
    (root / "sft").mkdir()
    (root / "sft" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4, "grad_norm": 1.0, "time/elapsed_s": 2.0 * s}) + "\n"
        for s in range(1, 6)) + json.dumps({"step": 5, "eval_loss": 1.0, "time/elapsed_s": 11.0}) + "\n")
    (root / "rm").mkdir()
    (root / "rm" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.7 - 0.05 * s, "accuracy": 0.5 + 0.05 * s, "lr": 1e-4}) + "\n"
        for s in range(1, 6)))
    (root / "eval").mkdir()

    def ci(m):
        return {"mean": m, "lo": m - 0.05, "hi": m + 0.05, "n": 10}

    def pol(vader, rm, kl):
        return {"vader": ci(vader), "rm": ci(rm), "kl": ci(kl), "ref_ppl": ci(12), "tokens": ci(9)}

    results = {"baseline": "sft", "metrics": ["vader", "rm", "kl", "ref_ppl", "tokens"],
               "policies": {"sft": pol(0.1, -0.2, 0.0), "ppo": pol(0.3, 0.3, 3.0)},
               "paired": {"ppo": {"vader": {**ci(0.2), "excludes_0": True}}}}
    (root / "eval" / "results.json").write_text(json.dumps(results))
    return root
