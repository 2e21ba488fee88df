"""Seconds per PPO update and peak memory of tether on a fixed small workload (S1), for a tiny model and SmolLM2.

S1: 8 prompts of ~12 tokens, 32 sampled tokens with EOS disabled (fixed work), T = 0.7; policy + frozen reference +
critic (initialised from the policy) + a Python reward (no reward model); GAE; 1 PPO epoch over one minibatch of 8
in one micro-batch; fp32; 2 threads. One warm-up update, then ``--updates`` timed updates (median reported).

    PYTHONPATH=. .venv/bin/python benchmarks/step_timing.py --models tiny,smollm2 --updates 2 [--critic-mode shared]

Phases are the trainer's own metrics: rollout = generation + old log-probs, scoring = reference/reward/critic
passes + rewards and advantages, update = the PPO epochs. Each model runs in its own subprocess so that peak RSS (``ru_maxrss`` of that child, via ``os.wait4``) is its own.
The tiny model is a random 2-layer Llama (d = 64) around the real GPT-2 tokenizer; SmolLM2 comes from the offline
asset cache (``tether.assets.smollm2_path``). Prints one table and writes ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = ["The movie was", "I think that the film", "Honestly, the acting", "The ending of this story",
           "My favourite scene", "The director clearly", "If you like slow films,", "The soundtrack"]
THREADS = 2


def _reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(c.count(" ")) / 10 for c in completions]


def _model_dir(name: str, work: Path) -> Path:
    if name == "llama16m":  # the 16 M Llama of ppo_vs_trl.py (4 layers, d 256), built there and cached
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import ppo_vs_trl

        return ppo_vs_trl.build_models("tiny") / "policy"
    if name == "smollm2":
        from tether.assets.smollm2 import smollm2_path

        return smollm2_path()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether.assets.gpt2_tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok) + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    out = work / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def worker(name: str, updates: int, critic_mode: str = "separate", response_length: int = 32,
           batch: int = 8) -> dict:
    import torch

    from tether import PPOConfig, PPOTrainer

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="tether-steptiming-"))
    cfg = PPOConfig(
        num_updates=updates + 1, rollout_batch_size=batch, num_minibatches=1, micro_batch_size=batch,
        num_ppo_epochs=1, response_length=response_length, stop_at_eos=False, temperature=0.7, advantage="gae", output_dir=str(work / "run"),
        progress=False, sample_every=0, critic_mode=critic_mode,
    )
    prompts = [f"{p} ({i})" for i in range(batch // len(PROMPTS) + 1) for p in PROMPTS][:batch]
    trainer = PPOTrainer(cfg, policy=str(_model_dir(name, work)), reward=_reward, prompts=prompts)
    params = sum(p.numel() for p in trainer.policy.parameters())
    runs = [trainer.step() for _ in range(updates + 1)][1:]
    total = [m["time/rollout_s"] + m["time/score_s"] + m["time/update_s"] for m in runs]
    med = statistics.median
    return {
        "model": name, "critic_mode": critic_mode, "response_length": response_length, "batch": batch, "policy_params_m": params / 1e6, "updates_timed": len(runs),
        "s_per_update": med(total), "all_s": [round(t, 3) for t in total],
        "rollout_s": med(m["time/rollout_s"] for m in runs),
        "scoring_s": med(m["time/score_s"] for m in runs),
        "update_s": med(m["time/update_s"] for m in runs),
        "tokens_per_s": med(m["perf/tokens_per_s"] for m in runs),
    }


def _run_child(name: str, updates: int, critic_mode: str, response_length: int = 32, batch: int = 8) -> dict:
    cmd = [sys.executable, __file__, "--_worker", name, "--updates", str(updates), "--critic-mode", critic_mode,
           "--response-length", str(response_length), "--batch", str(batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"step_timing: the {name} worker failed (status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # Linux reports KiB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--updates", type=int, default=2, help="timed updates after one warm-up")
    ap.add_argument("--critic-mode", default="separate", choices=["separate", "shared"],
                    help="critic layout (PPOConfig.critic_mode)")
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="prompts per update (one minibatch, one micro-batch)")
    ap.add_argument("--sweep", action="store_true",
                    help="scaling study: response length 16/32/64 and batch 4/8/16 on the first model, then every model "
                         "at the defaults; prints the fitted log-log slope of each")
    ap.add_argument("--out", default="runs/bench/step_timing.json")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        print(json.dumps(worker(a._worker, a.updates, a.critic_mode, a.response_length, a.batch)))
        return
    models = a.models.split(",")
    if a.sweep:
        rows = _sweep(models, a.updates, a.critic_mode)
    else:
        rows = [_run_child(name, a.updates, a.critic_mode, a.response_length, a.batch) for name in models]
    print(f"{'model':8} {'R':>4} {'B':>4} {'params M':>9} {'s/update':>9} {'rollout':>8} {'scoring':>8} {'update':>8} {'tok/s':>7} "
          f"{'peak GiB':>9}")
    for r in rows:
        print(f"{r['model']:8} {r['response_length']:4d} {r['batch']:4d} {r['policy_params_m']:9.1f} {r['s_per_update']:9.2f} {r['rollout_s']:8.2f} "
              f"{r['scoring_s']:8.2f} {r['update_s']:8.2f} {r['tokens_per_s']:7.1f} {r['peak_rss_gib']:9.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"workload": "S1", "threads": THREADS, "loadavg": os.getloadavg(),
                                       "rows": rows}, indent=1))


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x: the exponent k in time ∝ x^k."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _sweep(models: list[str], updates: int, critic_mode: str) -> list[dict]:
    first = models[0]
    by_len = [_run_child(first, updates, critic_mode, response_length=r) for r in (16, 32, 64)]
    by_batch = [_run_child(first, updates, critic_mode, batch=b) for b in (4, 8, 16)]
    by_model = [by_len[1]] + [_run_child(m, updates, critic_mode) for m in models[1:]]
    fits = {
        "response_length": _slope([r["response_length"] for r in by_len], [r["s_per_update"] for r in by_len]),
        "batch": _slope([r["batch"] for r in by_batch], [r["s_per_update"] for r in by_batch]),
    }
    if len(by_model) >= 2:
        fits["params"] = _slope([r["policy_params_m"] for r in by_model], [r["s_per_update"] for r in by_model])
    print("fitted s/update ∝ x^k: " + ", ".join(f"{k} k = {v:.2f}" for k, v in fits.items()))
    return by_len + by_batch[::2] + by_model[1:]


if __name__ == "__main__":
    main()
