"""Profile one tether PPO update on W1 (the workload of ppo_vs_trl.py) with torch.profiler, on CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/profile_tether_update.py --model smollm2 [--warmup 0]

Prints the top operators by self CPU time, grouped into matmuls / vocab softmax ops / optimizer / other, and the
time of the phases (same wrappers as ppo_vs_trl.py). Models come from ppo_vs_trl.build_models (cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_vs_trl as bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="runs/bench/profile_tether_update.json")
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(bench.THREADS)
    import tether.algos.ppo as ppo_mod
    from tether.config.ppo import PPOConfig, RewardSpec

    mdir = bench.build_models(a.model)
    prompts = bench.make_prompts(mdir / "policy")
    cfg = PPOConfig(policy=str(mdir / "policy"), rewards=[RewardSpec(path=str(mdir / "reward"))],
                    output_dir=tempfile.mkdtemp(prefix="tether-prof-"), num_updates=a.warmup + 1,
                    rollout_batch_size=bench.PROMPTS, num_minibatches=1, micro_batch_size=bench.MICRO,
                    num_ppo_epochs=bench.EPOCHS, response_length=bench.RESP_LEN, temperature=0.7, stop_at_eos=False,
                    sample_every=0, progress=False)
    tr = ppo_mod.PPOTrainer(cfg, prompts=prompts)
    for _ in range(a.warmup):
        tr.step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m = tr.step()
    total = time.perf_counter() - t
    rows = []
    for e in prof.key_averages():
        rows.append({"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count})
    rows.sort(key=lambda r: -r["self_s"])
    self_total = sum(r["self_s"] for r in rows)
    groups = {"matmul (mm/addmm/bmm/linear fwd+bwd)": ("mm", "addmm", "bmm", "matmul", "linear", "_mkl", "dot"),
              "vocab softmax (logsumexp/log_softmax/softmax/exp/sub/div)": (
                  "logsumexp", "log_softmax", "softmax", "exp", "_log_softmax", "div", "sub", "gather"),
              "optimizer (adamw/foreach/lerp/sqrt/addcdiv)": ("adam", "foreach", "lerp", "addcdiv", "sqrt", "addcmul"),
              "attention (sdpa)": ("scaled_dot_product", "flash", "_efficient"),
              "copies (copy_/to/cat/clone)": ("copy_", "aten::to", "cat", "clone", "contiguous")}
    agg = {g: 0.0 for g in groups}
    agg["other"] = 0.0
    for r in rows:
        name = r["op"].lower()
        for g, keys in groups.items():
            if any(k in name for k in keys):
                agg[g] += r["self_s"]
                break
        else:
            agg["other"] += r["self_s"]
    print(f"one update: {total:.1f} s wall (profiled), rollout {m['time/rollout_s']:.1f} s, "
          f"update {m['time/update_s']:.1f} s; profiler self-time total {self_total:.1f} s")
    for g, v in sorted(agg.items(), key=lambda kv: -kv[1]):
        print(f"  {g:60} {v:8.2f} s  {100 * v / self_total:5.1f} %")
    print(f"top {a.top} ops by self CPU time:")
    for r in rows[: a.top]:
        print(f"  {r['op']:50} {r['self_s']:8.2f} s  {r['calls']:7d} calls")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": a.model, "wall_s": total, "groups_s": agg, "top": rows[:60],
                                       "metrics": {k: v for k, v in m.items() if k.startswith("time/")}}, indent=1))


if __name__ == "__main__":
    main()
