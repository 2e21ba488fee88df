"""tether PPO vs TRL 0.29.1 PPOTrainer on workload W1, on CPU, side by side.

W1: 32 prompts x 16 tokens, 32 sampled tokens (EOS disabled: fixed work), T = 0.7, 4 PPO epochs over one
minibatch of 32 in micro-batches of 8; policy + frozen reference + reward model (same tokenizer) + separate critic
initialised from the reward model; fp32; 2 threads. One warm-up update, then --updates timed updates.

    PYTHONPATH=. .venv/bin/python benchmarks/ppo_vs_trl.py --models tiny,smollm2 --impl tether,trl --updates 2

Each implementation runs in its own subprocess (peak RSS = ru_maxrss of that child only). TRL runs from a throwaway
virtualenv (default ~/.cache/tether/bench-trl-venv) created on first use, so tether's own dependencies stay free of
TRL. Impl `tether_bf16` is tether with `dtype: bfloat16` (frozen reference and reward model in bf16); `tether_amp`
adds `autocast: bfloat16` (every forward in bf16 matmuls, float32 weights and loss math).

Same work on both sides: TRL's dataset holds one spare batch (at the end of its dataloader TRL would step the
optimizer on every micro-batch), and both sides count optimizer steps per update (a global optimizer step hook);
the table prints them with the highest 1-minute load average seen, which should stay near or below 2 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PROMPTS, PROMPT_LEN, RESP_LEN, EPOCHS, MICRO = 32, 16, 32, 4, 8
THREADS = 2
TRL_PINS = ["torch==2.13.0", "trl==0.29.1", "accelerate==1.15.0"]
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TETHER_BENCH_CACHE", Path.home() / ".cache" / "tether"))
WORDS = ("the movie was a story about an old man who found his way home after many years at sea and every scene "
         "felt honest warm funny sad slow bright quiet loud strange simple clever").split()


# ------------------------------------------------------------------ models
def build_models(name: str) -> Path:
    """policy/ and reward/ (1-label sequence classifier of the same architecture, random head) for one model."""
    out = CACHE / "bench-models" / name
    if (out / "DONE").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    if name == "tiny":
        from tether.assets.gpt2_tokenizer import gpt2_tokenizer_dir

        tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir())
        tok.add_special_tokens({"pad_token": "<|pad|>"})
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                          max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        policy = AutoModelForCausalLM.from_config(cfg)
    elif name == "smollm2":
        from tether.assets.smollm2 import smollm2_path

        src = smollm2_path()
        tok = AutoTokenizer.from_pretrained(src)
        policy = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            policy.resize_token_embeddings(len(tok), mean_resizing=False)
        policy.config.pad_token_id = tok.pad_token_id
    else:
        raise SystemExit(f"unknown model {name!r} (tiny, smollm2)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent if out.parent.exists() else None))
    policy.save_pretrained(tmp / "policy")
    tok.save_pretrained(tmp / "policy")
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp / "policy", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp / "reward")
    tok.save_pretrained(tmp / "reward")
    (tmp / "DONE").write_text("ok\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def make_prompts(tok_dir: Path, n: int = PROMPTS, seed: int = 0) -> list[str]:
    """n prompt texts that encode to exactly PROMPT_LEN tokens (and decode/encode round-trip stably)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        ids = tok(" ".join(rng.choice(WORDS) for _ in range(30)), add_special_tokens=False)["input_ids"][:PROMPT_LEN]
        text = tok.decode(ids)
        if tok(text, add_special_tokens=False)["input_ids"] == ids:
            out.append(text)
    return out


def matmul_params(model_dir: Path, kind: str) -> int:
    """Parameters that take part in a matmul per token: everything but the input-embedding lookup, plus the
    (tied) LM head once for a causal LM. The attention score FLOPs are negligible at 48 tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    with torch.device("meta"):
        m = cls.from_config(AutoConfig.from_pretrained(model_dir))
    total = sum(p.numel() for p in m.parameters())  # unique parameters (tied counted once)
    emb = m.get_input_embeddings().weight.numel()
    n = total - emb
    if kind == "lm":
        n += m.get_output_embeddings().weight.numel()
    return n


def flops_per_update(n_lm: int, n_cls: int, impl: str) -> dict:
    """Analytic FLOPs of one W1 update: 2N per token forward, 6N per token forward+backward."""
    t = PROMPTS * (PROMPT_LEN + RESP_LEN)  # tokens of one full-sequence pass over the rollout
    gen = 2 * n_lm * PROMPTS * (PROMPT_LEN + RESP_LEN - 1)  # prefill + one KV-cached step per sampled token
    parts = {
        "generate": gen,
        "old_logprobs_fwd": 2 * n_lm * t if impl.startswith("tether") else 0,  # TRL reuses the sampling scores
        "ref_fwd": 2 * n_lm * t,
        "reward_fwd": 2 * n_cls * t,
        "critic_fwd": 2 * n_cls * t,
        "train_policy": 6 * n_lm * t * EPOCHS,
        "train_critic": 6 * n_cls * t * EPOCHS,
    }
    parts["total"] = sum(parts.values())
    return parts


# ------------------------------------------------------------------ matmul floor
def matmul_rate(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    import torch

    torch.set_num_threads(THREADS)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------ tether worker (runs in a child process)
def tether_worker(model_dir: Path, updates: int, dtype: str, prompts: list[str], autocast: str = "none") -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import tether.algos.ppo as ppo_mod
    import tether.rollout.generate as gen_mod
    from tether.config.ppo import PPOConfig, RewardSpec

    phase: dict[str, float] = {}

    def timed(module, name, key):
        orig = getattr(module, name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                phase[key] = phase.get(key, 0.0) + time.perf_counter() - t

        setattr(module, name, wrapper)

    # timing wrappers only (behaviour unchanged): the names the trainer looks up at call time
    timed(ppo_mod, "generate", "generate_total")  # sampling + old-logprob forward
    timed(gen_mod, "response_logprobs", "old_logprobs_fwd")  # the recompute inside generate()
    timed(ppo_mod, "reference_logprobs", "ref_fwd")
    timed(ppo_mod, "combine_scores", "reward_fwd")
    timed(ppo_mod, "rollout_values", "critic_fwd")
    steps: dict[int, int] = {}  # optimizer steps per optimizer in the current update (same work on both sides)
    torch.optim.optimizer.register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps.__setitem__(id(opt), steps.get(id(opt), 0) + 1))

    out_dir = tempfile.mkdtemp(prefix="tether-bench-")
    cfg = PPOConfig(
        policy=str(model_dir / "policy"), rewards=[RewardSpec(path=str(model_dir / "reward"))], prompts=None,
        output_dir=out_dir, dtype=dtype, autocast=autocast, num_updates=updates + 1, rollout_batch_size=PROMPTS, num_minibatches=1,
        micro_batch_size=MICRO, num_ppo_epochs=EPOCHS, response_length=RESP_LEN, temperature=0.7,
        stop_at_eos=False, sample_every=0, progress=False, seed=0, device="cpu",  # a CPU comparison (TRL: use_cpu)
    )
    t0 = time.perf_counter()
    trainer = ppo_mod.PPOTrainer(cfg, prompts=prompts)
    t_setup = time.perf_counter() - t0
    rm = trainer.rewards[0].fn
    token_path = bool(getattr(rm, "shares_tokenizer", False))
    rows = []
    for _ in range(updates + 1):
        phase.clear()
        steps.clear()
        t = time.perf_counter()
        m = trainer.step()
        total = time.perf_counter() - t
        gen_only = phase.get("generate_total", 0.0) - phase.get("old_logprobs_fwd", 0.0)
        scoring = sum(phase.get(k, 0.0) for k in ("old_logprobs_fwd", "ref_fwd", "reward_fwd", "critic_fwd"))
        rows.append({
            "total_s": total, "generate_s": gen_only, "scoring_fwd_s": scoring, "train_s": m["time/update_s"],
            "other_s": total - gen_only - scoring - m["time/update_s"],
            **{f"{k}_s": v for k, v in phase.items()},
            "metric_rollout_s": m["time/rollout_s"], "metric_score_s": m["time/score_s"],
            "metric_update_s": m["time/update_s"], "response_tokens": m["response/length_mean"] * PROMPTS,
            "logprob_mismatch_max": m["rollout/logprob_mismatch_max"],
            "first_minibatch_ratio_dev": m["policy/first_minibatch_ratio_dev"],
            "loadavg_1m": os.getloadavg()[0],  # > 2 on this 2-core machine means other work competed for the CPU
            "optimizer_steps": sorted(steps.values()),  # one count per optimizer (policy, critic)
        })
        print(f"[tether/{dtype}/autocast={autocast}] update {len(rows)}: {total:.2f} s (logprob mismatch "
              f"{m['rollout/logprob_mismatch_max']:.2e}, first-minibatch |ratio-1| "
              f"{m['policy/first_minibatch_ratio_dev']:.2e})", file=sys.stderr, flush=True)
    return {"rows": rows, "setup_s": t_setup, "reward_token_path": token_path,
            "critic_from": "reward model" if token_path else "?"}


# ------------------------------------------------------------------ TRL driver (written out, run in its venv)
TRL_SCRIPT = textwrap.dedent('''
    """W1 with TRL 0.29.1 trl.experimental.ppo.PPOTrainer; written by tether's benchmarks/ppo_vs_trl.py."""
    import json, os, sys, tempfile, time, warnings
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    spec = json.load(open(sys.argv[1]))
    torch.set_num_threads(spec["threads"]); torch.manual_seed(0)
    d, n_up, P = spec["model_dir"], spec["updates"] + 1, spec["prompts_per_update"]
    tok = AutoTokenizer.from_pretrained(f"{d}/policy", padding_side="left")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in spec["prompts"]]
    assert all(len(i) == spec["prompt_len"] for i in ids), [len(i) for i in ids]
    policy = AutoModelForCausalLM.from_pretrained(f"{d}/policy")
    ref = AutoModelForCausalLM.from_pretrained(f"{d}/policy")
    reward = AutoModelForSequenceClassification.from_pretrained(f"{d}/reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(f"{d}/reward", num_labels=1)
    for m in (policy, ref):
        m.generation_config.eos_token_id = None  # EOS off: every response has the full length
        m.generation_config.pad_token_id = tok.pad_token_id
    # one spare batch: at the end of its dataloader accelerate syncs (and TRL steps the optimizer) on every
    # micro-batch, so a dataset of exactly n_up batches makes the last update do 4x the optimizer steps
    ds = Dataset.from_dict({"input_ids": (ids * (n_up + 1))[: P * (n_up + 1)]})
    steps = {}
    torch.optim.optimizer.register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps.__setitem__(id(opt), steps.get(id(opt), 0) + 1))
    cfg = PPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=spec["micro"],
                    gradient_accumulation_steps=P // spec["micro"], num_mini_batches=1,
                    num_ppo_epochs=spec["epochs"], response_length=spec["resp_len"], temperature=0.7,
                    local_rollout_forward_batch_size=P, total_episodes=P * n_up, stop_token=None,
                    missing_eos_penalty=None, num_sample_generations=0, report_to="none", save_strategy="no",
                    logging_steps=1, use_cpu=True, seed=0, dataloader_num_workers=0)
    phase = {}
    def wrap(name, key):
        orig = getattr(ppo_mod, name)
        def w(*a, **kw):
            if torch.is_grad_enabled():  # forward() is also the training forward: count rollout calls only
                return orig(*a, **kw)
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                phase[key] = phase.get(key, 0.0) + time.perf_counter() - t
        setattr(ppo_mod, name, w)
    wrap("batch_generation", "generate")   # sampling (old log-probs come from its scores)
    wrap("forward", "ref_fwd")             # the reference forward of the rollout
    wrap("get_reward", "value_reward_fwd") # value + reward forwards of the rollout
    rows = []
    class Clock(TrainerCallback):
        def __init__(self): self.t = None
        def on_step_begin(self, args, state, control, **kw):
            pass
        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            total = now - self.t
            scoring = phase.get("ref_fwd", 0.0) + phase.get("value_reward_fwd", 0.0)
            rows.append({"total_s": total, "generate_s": phase.get("generate", 0.0), "scoring_fwd_s": scoring,
                         "train_and_other_s": total - phase.get("generate", 0.0) - scoring, **{k + "_s": v for k, v in phase.items()},
                         "loadavg_1m": os.getloadavg()[0], "optimizer_steps": sorted(steps.values())})
            print(f"[trl] update {len(rows)}: {total:.2f} s, optimizer steps {sorted(steps.values())}",
                  file=sys.stderr, flush=True)
            phase.clear(); steps.clear(); self.t = time.perf_counter()
    clock = Clock()
    t0 = time.perf_counter()
    tr = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                    train_dataset=ds, value_model=value, callbacks=[clock])
    setup = time.perf_counter() - t0
    phase.clear(); clock.t = time.perf_counter()
    tr.train()
    import trl, transformers
    print("RESULT " + json.dumps({"rows": rows, "setup_s": setup, "versions": {
        "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}))
''')


def trl_python(venv: Path) -> Path:
    """The throwaway TRL venv's python, created (python -m venv + pip install) on first use."""
    import transformers

    py = venv / "bin" / "python"
    probe = "import trl, transformers, torch; print(trl.__version__, transformers.__version__, torch.__version__)"
    if py.is_file():
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.split()[:2] == ["0.29.1", transformers.__version__]:
            return py
    print(f"creating TRL venv at {venv} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *TRL_PINS, f"transformers=={transformers.__version__}"],
                   check=True)
    return py


# ------------------------------------------------------------------ parent: run children, collect
def run_child(cmd: list[str], env: dict | None = None) -> tuple[dict, float]:
    """Run cmd, return (its RESULT json, its own peak RSS in GB) — ru_maxrss of that child alone (os.wait4)."""
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=sys.stderr, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed (exit {p.returncode}):\n{text[-3000:]}")
    line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), ru.ru_maxrss / 1024**2  # KiB -> GiB


def summarise(res: dict, flops: dict, rates: dict, rss_gb: float) -> dict:
    timed = res["rows"][1:] or res["rows"]
    med = lambda k: statistics.median(r[k] for r in timed if k in r) if any(k in r for r in timed) else None  # noqa
    s = med("total_s")
    out = {
        "updates_timed": len(timed), "s_per_update": s, "all_s": [round(r["total_s"], 3) for r in timed],
        "generate_s": med("generate_s"), "scoring_fwd_s": med("scoring_fwd_s"),
        "train_s": med("train_s") if med("train_s") is not None else med("train_and_other_s"),
        "resp_tokens_per_s": PROMPTS * RESP_LEN / s, "peak_rss_gb": rss_gb,
        "gflops_per_update": flops["total"] / 1e9, "flops_parts_gflop": {k: v / 1e9 for k, v in flops.items()},
        "pct_fp32_matmul": 100 * flops["total"] / s / (rates["fp32_gflops"] * 1e9),
        "pct_bf16_matmul": 100 * flops["total"] / s / (rates["bf16_gflops"] * 1e9),
        "phases_median_s": {k: med(k) for k in sorted({k for r in timed for k in r}) if k.endswith("_s")},
        "setup_s": res.get("setup_s"),
        "loadavg_1m_at_updates": [round(r.get("loadavg_1m", -1), 2) for r in timed],
        "optimizer_steps_per_update": [r.get("optimizer_steps") for r in timed],
    }
    for k in ("versions", "reward_token_path"):
        if k in res:
            out[k] = res[k]
    return out


def fmt_table(model: str, impls: dict) -> str:
    cols = list(impls)
    lines = [f"\n== {model} ==", f"{'':28}" + "".join(f"{c:>16}" for c in cols)]
    ref = impls.get("trl")
    rows = [("s / update (median)", "s_per_update", "{:.2f}"), ("  generate s", "generate_s", "{:.2f}"),
            ("  scoring forwards s", "scoring_fwd_s", "{:.2f}"), ("  training s", "train_s", "{:.2f}"),
            ("response tokens / s", "resp_tokens_per_s", "{:.1f}"), ("peak RSS GB", "peak_rss_gb", "{:.2f}"),
            ("GFLOP / update", "gflops_per_update", "{:.0f}"), ("% of fp32 matmul rate", "pct_fp32_matmul", "{:.1f}")]
    for label, key, f in rows:
        cells = "".join(f"{f.format(impls[c][key]) if impls[c].get(key) is not None else '-':>16}" for c in cols)
        lines.append(f"{label:28}{cells}")
    steps = "".join(f"{str((impls[c].get('optimizer_steps_per_update') or ['-'])[0]):>16}" for c in cols)
    lines.append(f"{'optimizer steps / update':28}{steps}")
    loads = "".join(f"{max(impls[c].get('loadavg_1m_at_updates') or [-1]):>16.2f}" for c in cols)
    lines.append(f"{'max load avg (2 cores)':28}{loads}")
    if ref:
        for c in cols:
            if c != "trl":
                r = impls[c]
                lines.append(f"ratio {c}/trl: s/update {r['s_per_update'] / ref['s_per_update']:.3f}, "
                             f"peak RSS {r['peak_rss_gb'] / ref['peak_rss_gb']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--impl", default="tether,trl", help="comma list of tether, tether_bf16, tether_amp, trl")
    ap.add_argument("--updates", type=int, default=2, help="timed updates (after 1 warm-up)")
    ap.add_argument("--out", default="runs/bench/ppo_vs_trl.json")
    ap.add_argument("--trl-venv", default=str(CACHE / "bench-trl-venv"))
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._worker:  # child: one tether run
        spec = json.loads(Path(a._spec).read_text())
        res = tether_worker(Path(spec["model_dir"]), spec["updates"], spec["dtype"], spec["prompts"],
                            spec.get("autocast", "none"))
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch
    import transformers

    rates = {"fp32_gflops": matmul_rate("float32"), "bf16_gflops": matmul_rate("bfloat16"), "threads": THREADS,
             "size": 2048}
    print(f"matmul rate ({THREADS} threads, 2048^3): fp32 {rates['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {rates['bf16_gflops']:.0f} GFLOP/s", file=sys.stderr, flush=True)
    out_path = Path(a.out)
    report = {"workload": dict(prompts=PROMPTS, prompt_len=PROMPT_LEN, response_len=RESP_LEN, epochs=EPOCHS,
                               minibatches=1, micro_batch=MICRO, temperature=0.7, threads=THREADS, eos=False),
              "matmul": rates, "torch": torch.__version__, "transformers": transformers.__version__,
              "command": " ".join(sys.argv), "models": {}}
    if out_path.is_file():  # keep other models' results from earlier invocations
        try:
            old = json.loads(out_path.read_text())
            report["models"].update(old.get("models", {}))
        except Exception:
            pass
    impls = [s.strip() for s in a.impl.split(",") if s.strip()]
    tables = []
    for model in [s.strip() for s in a.models.split(",") if s.strip()]:
        mdir = build_models(model)
        prompts = make_prompts(mdir / "policy")
        n_lm, n_cls = matmul_params(mdir / "policy", "lm"), matmul_params(mdir / "reward", "cls")
        entry = {"matmul_params_lm": n_lm, "matmul_params_cls": n_cls, "impls": {}}
        with tempfile.TemporaryDirectory() as td:
            spec_path = Path(td) / "spec.json"
            for impl in impls:
                print(f"--- {model} / {impl}", file=sys.stderr, flush=True)
                if impl in ("tether", "tether_bf16", "tether_amp"):
                    spec_path.write_text(json.dumps({"model_dir": str(mdir), "updates": a.updates, "prompts": prompts,
                                                     "dtype": "float32" if impl == "tether" else "bfloat16",
                                                     "autocast": "bfloat16" if impl == "tether_amp" else "none"}))
                    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
                    res, rss = run_child([sys.executable, str(Path(__file__).resolve()), "--_worker", impl,
                                          "--_spec", str(spec_path)], env)
                elif impl == "trl":
                    py = trl_python(Path(a.trl_venv))
                    script = Path(td) / "trl_w1.py"
                    script.write_text(TRL_SCRIPT)
                    spec_path.write_text(json.dumps({"model_dir": str(mdir), "updates": a.updates,
                                                     "prompts": prompts, "prompt_len": PROMPT_LEN,
                                                     "prompts_per_update": PROMPTS, "resp_len": RESP_LEN,
                                                     "epochs": EPOCHS, "micro": MICRO, "threads": THREADS}))
                    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
                    res, rss = run_child([str(py), str(script), str(spec_path)], env)
                else:
                    raise SystemExit(f"unknown impl {impl!r}")
                entry["impls"][impl] = summarise(res, flops_per_update(n_lm, n_cls, impl), rates, rss)
                entry["impls"][impl]["raw_rows"] = res["rows"]
        report["models"][model] = entry
        tables.append(fmt_table(model, {k: v for k, v in entry["impls"].items()}))
        print(tables[-1], flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))
    print(f"\nmatmul: fp32 {rates['fp32_gflops']:.0f} GFLOP/s, bf16 {rates['bf16_gflops']:.0f} GFLOP/s; "
          f"written {out_path}")


if __name__ == "__main__":
    main()
