"""PPO on one CUDA GPU: tether's throughput, peak GPU memory and sampler-vs-trainer log-prob mismatch, then TRL
0.29.1's PPOTrainer on the same workload, side by side (docs/performance.md, "GPU").

Workload W1 of benchmarks/ppo_vs_trl.py (imported, not copied: its models, prompts and TRL driver): 32 prompts ×
16 tokens, 32 sampled tokens (EOS off: fixed work), T = 0.7, 4 PPO epochs over one minibatch of 32 in micro-batches
of 8; four models (policy, frozen reference, reward model, separate critic from the reward model), fp32. One
warm-up update, then --updates measured ones.

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py                       # SmolLM2-135M-Instruct, CUDA, + TRL
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --device cpu --updates 1 --models tiny --impl tether

The CPU form is a smoke test of the script, not a measurement. ``--device cuda`` without a GPU is refused in one
line (exit 2). Writes a JSON report (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_vs_trl as w1  # noqa: E402  (W1's models, prompts, TRL driver and venv)

MODELS = {"smollm2": "smollm2", "tiny": "tiny"}


def tether_run(model_dir: Path, updates: int, device: str, prompts: list[str]) -> dict:
    """tether PPO on W1 on ``device``: per-update wall time, response tokens/s, the log-prob mismatch, and the peak
    GPU memory (``torch.cuda.max_memory_allocated``, reset after the models are loaded) on CUDA."""
    import torch

    from tether.algos.ppo_trainer import PPOTrainer
    from tether.config.ppo import PPOConfig, RewardSpec

    cfg = PPOConfig(
        policy=str(model_dir / "policy"), rewards=[RewardSpec(path=str(model_dir / "reward"))], device=device,
        output_dir=tempfile.mkdtemp(prefix="tether-gpu-check-"), num_updates=updates + 1,
        rollout_batch_size=w1.PROMPTS, num_minibatches=1, micro_batch_size=w1.MICRO, num_ppo_epochs=w1.EPOCHS,
        response_length=w1.RESP_LEN, temperature=0.7, stop_at_eos=False, sample_every=0, progress=False, seed=0,
        monitor={"preflight": False, "tensorboard": False, "report": False},
    )
    cuda = torch.device(device).type == "cuda"
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, prompts=prompts)
    setup = time.perf_counter() - t0
    where = {name: str(next(m.parameters()).device) for name, m in
             (("policy", trainer.policy), ("reference", trainer.ref), ("critic", trainer.critic),
              ("reward", trainer.rewards[0].fn.model))}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for _ in range(updates + 1):
        t = time.perf_counter()
        m = trainer.step()
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - t
        tokens = m["response/length_mean"] * w1.PROMPTS
        rows.append({"total_s": total, "tokens": tokens, "tokens_per_s": tokens / total,
                     "logprob_mismatch_max": m["rollout/logprob_mismatch_max"],
                     "first_minibatch_ratio_dev": m["policy/first_minibatch_ratio_dev"],
                     "optimizer_steps": m["train/optimizer_steps"]})
        print(f"[tether/{device}] update {len(rows)}: {total:.2f} s, logprob mismatch "
              f"{m['rollout/logprob_mismatch_max']:.2e}", file=sys.stderr, flush=True)
    timed = rows[1:] or rows
    return {"setup_s": setup, "models_on": where, "rows": rows,
            "update_s": statistics.median(r["total_s"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "logprob_mismatch_max": max(r["logprob_mismatch_max"] for r in rows),
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None}


TRL_GPU_SCRIPT = w1.TRL_SCRIPT.replace("use_cpu=True", "use_cpu=False").replace(
    'print("RESULT " + json.dumps({"rows": rows,',
    'print("RESULT " + json.dumps({"peak_gpu_bytes": torch.cuda.max_memory_allocated(), "rows": rows,')
"""W1's TRL driver (benchmarks/ppo_vs_trl.py) on the GPU, reporting its peak GPU memory too."""


def trl_run(model_dir: Path, updates: int, prompts: list[str], venv: Path) -> dict:
    """TRL 0.29.1 PPOTrainer on W1 on the GPU, in its own throwaway venv (created on first use)."""
    import os

    assert "use_cpu=False" in TRL_GPU_SCRIPT and "peak_gpu_bytes" in TRL_GPU_SCRIPT, "W1's TRL driver changed"
    py = w1.trl_python(venv)
    with tempfile.TemporaryDirectory() as td:
        script, spec = Path(td) / "trl_w1_gpu.py", Path(td) / "spec.json"
        script.write_text(TRL_GPU_SCRIPT)
        spec.write_text(json.dumps({"model_dir": str(model_dir), "updates": updates, "prompts": prompts,
                                    "prompt_len": w1.PROMPT_LEN, "prompts_per_update": w1.PROMPTS,
                                    "resp_len": w1.RESP_LEN, "epochs": w1.EPOCHS, "micro": w1.MICRO,
                                    "threads": w1.THREADS}))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        res, _ = w1.run_child([str(py), str(script), str(spec)], env)
    timed = res["rows"][1:] or res["rows"]
    tokens = w1.PROMPTS * w1.RESP_LEN  # EOS off: every response has the full length
    return {"setup_s": res["setup_s"], "rows": res["rows"], "versions": res.get("versions"),
            "update_s": statistics.median(r["total_s"] for r in timed),
            "tokens_per_s": statistics.median(tokens / r["total_s"] for r in timed),
            "logprob_mismatch_max": None, "peak_gpu_gib": res["peak_gpu_bytes"] / 1024**3}


def fmt_table(model: str, impls: dict) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"\n{model}: W1 ({w1.PROMPTS} prompts × {w1.RESP_LEN} tokens, {w1.EPOCHS} epochs, 4 models)",
             "| impl | device | update s (median) | tokens/s | peak GPU GiB | logprob mismatch max |",
             "|---|---|---|---|---|---|"]
    for name, r in impls.items():
        lines.append(f"| {name} | {r['device']} | {r['update_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{f(r['peak_gpu_gib'], '.2f')} | {f(r['logprob_mismatch_max'], '.2e')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a smoke run, no TRL timing)")
    ap.add_argument("--models", default="smollm2", help="comma list of smollm2, tiny")
    ap.add_argument("--impl", default=None, help="comma list of tether, trl (default: both on CUDA, tether on cpu)")
    ap.add_argument("--updates", type=int, default=3, help="measured updates (after 1 warm-up)")
    ap.add_argument("--out", default="runs/bench/gpu_check.json")
    ap.add_argument("--trl-venv", default=str(w1.CACHE / "bench-trl-venv"))
    a = ap.parse_args(argv)

    import torch

    from tether.engine.dist import resolve_device
    from tether.errors import ConfigError

    try:
        device = resolve_device(a.device)
    except ConfigError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    impls = [s.strip() for s in (a.impl or ("tether,trl" if device.type == "cuda" else "tether")).split(",")]
    bad = [i for i in impls if i not in ("tether", "trl")] or [m for m in a.models.split(",") if m not in MODELS]
    if bad:
        print(f"gpu_check: error: unknown impl/model {bad[0]!r} (impl: tether, trl; models: smollm2, tiny)",
              file=sys.stderr)
        return 2
    if "trl" in impls and device.type != "cuda":
        print("gpu_check: error: --impl trl runs on CUDA only here (the CPU comparison is benchmarks/ppo_vs_trl.py)",
              file=sys.stderr)
        return 2
    report = {"workload": dict(prompts=w1.PROMPTS, prompt_len=w1.PROMPT_LEN, response_len=w1.RESP_LEN,
                               epochs=w1.EPOCHS, minibatches=1, micro_batch=w1.MICRO, temperature=0.7, eos=False),
              "device": str(device), "torch": torch.__version__, "command": " ".join(sys.argv),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "models": {}}
    out = Path(a.out)
    for model in a.models.split(","):
        mdir = w1.build_models(MODELS[model])
        prompts = w1.make_prompts(mdir / "policy")
        entry = {}
        for impl in impls:
            print(f"--- {model} / {impl} on {device}", file=sys.stderr, flush=True)
            r = (tether_run(mdir, a.updates, str(device), prompts) if impl == "tether"
                 else trl_run(mdir, a.updates, prompts, Path(a.trl_venv)))
            entry[impl] = {"device": str(device), **r}
        report["models"][model] = entry
        print(fmt_table(model, entry), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
