"""tether PPO vs TRL 0.29.1 PPOTrainer on workload W1, on CPU, side by side: the rows of issue 14 in one invocation.

W1: 32 prompts x 16 tokens, 32 sampled tokens (EOS disabled: fixed work), T = 0.7, 4 PPO epochs over one
minibatch of 32 in micro-batches of 8; policy + frozen reference + reward model (same tokenizer) + separate critic
initialised from the reward model; fp32; 2 threads. One warm-up update, then --updates timed updates.

    PYTHONPATH=. .venv/bin/python benchmarks/ppo_vs_trl.py                     # issue 14's rows a-d (plan issue14)
    PYTHONPATH=. .venv/bin/python benchmarks/ppo_vs_trl.py --plan issue14-tiny --updates 1   # the same on tiny only
    PYTHONPATH=. .venv/bin/python benchmarks/ppo_vs_trl.py --models smollm2 --impl tether_amp,trl   # any grid

Plan issue14 (tether / TRL ratios against one TRL run per model of the same invocation):
  a) smollm2 `tether`: the same configuration as TRL (fp32, 4 full models): time and peak memory;
  b) tiny `tether`: the same configuration: time;
  c) smollm2 `tether_defaults`: PPOConfig's own defaults, only W1's workload sizes set: time and peak memory (when its
     resolved config equals row a's, row a's run serves for both and the table says so);
  d) smollm2 `tether_lora`: `policy_lora` r = 16, the reference = the adapter switched off, the critic as tether
     builds it when only policy_lora is set (separate, from the reward model, fully trained); `tether_lora_shared`
     (row d'): the same with `critic_mode: shared`, the LoRA layout of docs/memory.md: peak memory and time.

Every side runs in its own subprocess (peak RSS = ru_maxrss of that child only). TRL runs from a throwaway
virtualenv (default ~/.cache/tether/bench-trl-venv) created on first use with pip, constrained by the repository's
constraints-cpu.txt like `make venv`, so tether's own dependencies stay free of TRL. Impl `tether_bf16` is tether with
`dtype: bfloat16` (frozen reference and reward model in bf16); `tether_amp` adds `autocast: bfloat16`.

Same work on both sides: TRL's dataset holds one spare batch (at the end of its dataloader TRL would step the
optimizer on every micro-batch); both sides count, per update, optimizer steps (a global optimizer step hook), the
tokens sampled and the forward passes of every transformer trunk in memory (a forward hook on each: generation steps,
full-sequence forwards without and with gradients, in calls and rows). The parent samples the 1-minute load average
before start and every 2 s during the run; on 2 cores its maximum should stay near or below 2.
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
import threading
import time
from pathlib import Path

PROMPTS, PROMPT_LEN, RESP_LEN, EPOCHS, MICRO = 32, 16, 32, 4, 8
THREADS = 2
TRL_VERSION = "0.29.1"
TRL_PINS = ["accelerate==1.15.0"]  # with trl==TRL_VERSION and tether's torch and transformers
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


# ------------------------------------------------------------------ the work done, counted the same way on both sides
class ForwardCounter:
    """Forward passes of every transformer trunk in memory (a module with a ``layers`` ModuleList inside a
    transformers model: the policy's, the reference's, the reward model's, the critic's), per update. A call over the
    full W1 sequence (``full_len`` columns) is a full-sequence forward, with or without gradients; any other width is a
    generation step (the prompt pass or a one-token KV-cached step), each drawing one token per row. Imported by the
    TRL driver too, so both sides count alike."""

    def __init__(self, full_len: int):
        import gc
        import warnings

        import torch
        from transformers import PreTrainedModel

        self.full_len, self._torch = full_len, torch
        with warnings.catch_warnings():  # isinstance() on some lazy module objects warns about deprecated names
            warnings.simplefilter("ignore")
            self.trunks = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)
                           and isinstance(getattr(o, "layers", None), torch.nn.ModuleList)]
        for t in self.trunks:
            t.register_forward_hook(self._hook, with_kwargs=True)
        self.reset()

    def reset(self) -> None:
        self.c = {"generation_calls": 0, "sampled_tokens": 0, "full_nograd_calls": 0, "full_nograd_rows": 0,
                  "full_grad_calls": 0, "full_grad_rows": 0}
        self.used: set[int] = set()

    def _hook(self, module, args, kwargs, out) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = args[0] if args else kwargs.get("inputs_embeds")
        rows, width = int(x.shape[0]), int(x.shape[1])
        self.used.add(id(module))
        if width != self.full_len:
            self.c["generation_calls"] += 1
            self.c["sampled_tokens"] += rows
        else:
            kind = "grad" if self._torch.is_grad_enabled() else "nograd"
            self.c[f"full_{kind}_calls"] += 1
            self.c[f"full_{kind}_rows"] += rows

    def snapshot(self) -> dict:
        return {**self.c, "trunks_in_memory": len(self.trunks), "trunks_used": len(self.used)}


# ------------------------------------------------------------------ tether's variants
VARIANTS = {  # name: (what it is, options on top of the W1 workload; None = PPOConfig's defaults for everything else)
    "tether": ("same configuration as TRL: fp32, 4 full models, micro-batch 8",
               dict(dtype="float32", autocast="none", critic_mode="separate", policy_lora=None,
                    gradient_checkpointing=False, micro_batch_size=MICRO)),
    "tether_bf16": ("tether with dtype bfloat16 (frozen reference and reward model in bf16)",
                    dict(dtype="bfloat16", autocast="none", critic_mode="separate", policy_lora=None,
                         gradient_checkpointing=False, micro_batch_size=MICRO)),
    "tether_amp": ("tether with dtype and autocast bfloat16",
                   dict(dtype="bfloat16", autocast="bfloat16", critic_mode="separate", policy_lora=None,
                        gradient_checkpointing=False, micro_batch_size=MICRO)),
    "tether_defaults": ("PPOConfig's defaults, only W1's workload sizes set", {}),
    "tether_lora": ("policy_lora r=16, reference = adapter off, separate critic from the RM (fully trained)",
                    dict(dtype="float32", autocast="none", critic_mode="separate", policy_lora={"r": 16},
                         gradient_checkpointing=False, micro_batch_size=MICRO)),
    "tether_lora_shared": ("policy_lora r=16, reference = adapter off, value head on the policy's trunk",
                           dict(dtype="float32", autocast="none", critic_mode="shared", policy_lora={"r": 16},
                                gradient_checkpointing=False, micro_batch_size=MICRO)),
}
LAYOUT_KEYS = ("dtype", "autocast", "critic_mode", "policy_lora", "critic_lora", "gradient_checkpointing",
               "micro_batch_size")


def variant_config(impl: str, model_dir: Path, updates: int, out_dir: str):
    """The PPOConfig of one tether variant on W1: the workload's sizes (and logging off), then the variant's options."""
    from tether.config.ppo import PPOConfig, RewardSpec

    workload = dict(policy=str(model_dir / "policy"), rewards=[RewardSpec(path=str(model_dir / "reward"))],
                    prompts=None, output_dir=out_dir, num_updates=updates + 1, rollout_batch_size=PROMPTS,
                    num_minibatches=1, num_ppo_epochs=EPOCHS, response_length=RESP_LEN, temperature=0.7,
                    stop_at_eos=False, sample_every=0, progress=False, seed=0,
                    device="cpu")  # a CPU comparison (TRL: use_cpu=True), also where a GPU is visible
    return PPOConfig(**workload, **VARIANTS[impl][1])


def same_run(impl_a: str, impl_b: str, model_dir: Path, updates: int) -> bool:
    """True when two variants resolve to the same PPOConfig (then one run measures both)."""
    from tether.config.base import dump

    return dump(variant_config(impl_a, model_dir, updates, "x")) == dump(variant_config(impl_b, model_dir, updates,
                                                                                        "x"))


# ------------------------------------------------------------------ tether worker (runs in a child process)
def tether_worker(model_dir: Path, updates: int, impl: str, prompts: list[str]) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import tether.algos.ppo as ppo_mod
    import tether.rollout.generate as gen_mod
    from tether.algos.ppo_trainer import PPOTrainer
    from tether.config.base import dump

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

    # timing wrappers only (behaviour unchanged): the names the update looks up at call time
    timed(ppo_mod, "generate", "generate_total")  # sampling + old-logprob forward
    timed(gen_mod, "response_logprobs", "old_logprobs_fwd")  # the recompute inside generate()
    timed(ppo_mod, "reference_logprobs", "ref_fwd")
    timed(ppo_mod, "combine_scores", "reward_fwd")
    timed(ppo_mod, "rollout_values", "critic_fwd")
    steps: dict[int, int] = {}  # optimizer steps per optimizer in the current update (same work on both sides)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.__setitem__(id(opt), steps.get(id(opt), 0) + 1))

    out_dir = tempfile.mkdtemp(prefix="tether-bench-")
    cfg = variant_config(impl, model_dir, updates, out_dir)
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, prompts=prompts)
    t_setup = time.perf_counter() - t0
    counter = ForwardCounter(PROMPT_LEN + RESP_LEN)
    rm = trainer.rewards[0].fn
    token_path = bool(getattr(rm, "shares_tokenizer", False))
    rows = []
    for _ in range(updates + 1):
        phase.clear()
        steps.clear()
        counter.reset()
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
            "metric_sampled_tokens": m["rollout/sampled_tokens"],
            "micro_batch_size": m["train/micro_batch_size"],
            "logprob_mismatch_max": m["rollout/logprob_mismatch_max"],
            "first_minibatch_ratio_dev": m["policy/first_minibatch_ratio_dev"],
            "loadavg_1m": os.getloadavg()[0],  # > 2 on this 2-core machine means other work competed for the CPU
            "optimizer_steps": sorted(steps.values()),  # one count per optimizer (policy, critic)
            "work": counter.snapshot(),
        })
        print(f"[{impl}] update {len(rows)}: {total:.2f} s (logprob mismatch "
              f"{m['rollout/logprob_mismatch_max']:.2e}, first-minibatch |ratio-1| "
              f"{m['policy/first_minibatch_ratio_dev']:.2e}, optimizer steps {sorted(steps.values())})",
              file=sys.stderr, flush=True)
    resolved = dump(cfg)
    return {"rows": rows, "setup_s": t_setup, "reward_token_path": token_path,
            "critic_from": ("policy trunk (shared)" if cfg.critic_mode == "shared"
                            else "reward model" if token_path else "policy"),
            "config": {k: resolved[k] for k in LAYOUT_KEYS}}


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
    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.__setitem__(id(opt), steps.get(id(opt), 0) + 1))
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
                         "loadavg_1m": os.getloadavg()[0], "optimizer_steps": sorted(steps.values()),
                         "work": counter.snapshot()})
            print(f"[trl] update {len(rows)}: {total:.2f} s, optimizer steps {sorted(steps.values())}",
                  file=sys.stderr, flush=True)
            phase.clear(); steps.clear(); counter.reset(); self.t = time.perf_counter()
    clock = Clock()
    t0 = time.perf_counter()
    tr = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                    train_dataset=ds, value_model=value, callbacks=[clock])
    setup = time.perf_counter() - t0
    sys.path.insert(0, spec["bench_dir"])  # the same trunk-forward counter as tether's side
    from ppo_vs_trl import ForwardCounter
    counter = ForwardCounter(spec["prompt_len"] + spec["resp_len"])
    phase.clear(); clock.t = time.perf_counter()
    tr.train()
    import trl, transformers
    print("RESULT " + json.dumps({"rows": rows, "setup_s": setup, "versions": {
        "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}))
''')


def trl_python(venv: Path) -> Path:
    """The throwaway TRL venv's python, created on first use: ``python -m venv``, then pip installs TRL 0.29.1 with
    tether's own torch and transformers versions, constrained by constraints-cpu.txt as `make venv` is (so CPU
    torch comes from the same place as tether's)."""
    import torch
    import transformers

    py = venv / "bin" / "python"
    probe = "import trl, transformers, torch; print(trl.__version__, transformers.__version__, torch.__version__)"
    if py.is_file():
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.split()[:2] == [TRL_VERSION, transformers.__version__]:
            return py
    print(f"creating TRL venv at {venv} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"trl=={TRL_VERSION}", *TRL_PINS,
            f"transformers=={transformers.__version__}"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints-cpu.txt"), *pins],
                   check=True)
    return py


# ------------------------------------------------------------------ parent: run children, collect
class LoadWatch:
    """The 1-minute load average before start, then every ``every`` seconds in a thread, labelled with the side
    that was running."""

    def __init__(self, every: float = 2.0):
        self.before = os.getloadavg()[0]
        self.label, self.samples, self._stop = "setup", [], threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append((self.label, os.getloadavg()[0]))

    def max(self, label: str | None = None) -> float:
        vals = [v for lab, v in self.samples if label is None or lab == label]
        return max(vals) if vals else os.getloadavg()[0]

    def stop(self) -> None:
        self._stop.set()


def run_child(cmd: list[str], env: dict | None = None) -> tuple[dict, float]:
    """Run cmd, return (its RESULT json, its own peak RSS in GB) — ru_maxrss of that child alone (os.wait4)."""
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=sys.stderr, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if p.returncode != 0:  # its traceback went to stderr above
        raise SystemExit(f"ppo_vs_trl: {' '.join(cmd[:2])} failed (exit {p.returncode}); its error is printed above")
    line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), ru.ru_maxrss / 1024**2  # KiB -> GiB


def full_layout(res: dict) -> bool:
    """Whether a run holds W1's four full models (the layout the analytic FLOPs count): TRL, or a tether variant with
    a separate fully trained critic, no adapter and no checkpointing."""
    c = res.get("config")
    return c is None or (c["critic_mode"] == "separate" and c["policy_lora"] is None and c["critic_lora"] is None
                         and not c["gradient_checkpointing"])


def summarise(res: dict, flops: dict | None, rates: dict, rss_gb: float) -> dict:
    timed = res["rows"][1:] or res["rows"]
    med = lambda k: statistics.median(r[k] for r in timed if k in r) if any(k in r for r in timed) else None  # noqa
    s = med("total_s")
    work = [r.get("work") for r in timed]
    out = {
        "updates_timed": len(timed), "s_per_update": s, "all_s": [round(r["total_s"], 3) for r in timed],
        "generate_s": med("generate_s"), "scoring_fwd_s": med("scoring_fwd_s"),
        "train_s": med("train_s") if med("train_s") is not None else med("train_and_other_s"),
        "resp_tokens_per_s": PROMPTS * RESP_LEN / s, "peak_rss_gb": rss_gb,
        "gflops_per_update": flops["total"] / 1e9 if flops else None,
        "flops_parts_gflop": {k: v / 1e9 for k, v in flops.items()} if flops else None,
        "pct_fp32_matmul": 100 * flops["total"] / s / (rates["fp32_gflops"] * 1e9) if flops else None,
        "pct_bf16_matmul": 100 * flops["total"] / s / (rates["bf16_gflops"] * 1e9) if flops else None,
        "phases_median_s": {k: med(k) for k in sorted({k for r in timed for k in r}) if k.endswith("_s")},
        "setup_s": res.get("setup_s"),
        "loadavg_1m_at_updates": [round(r.get("loadavg_1m", -1), 2) for r in timed],
        "optimizer_steps_per_update": [r.get("optimizer_steps") for r in timed],
        "work_per_update": work[0], "work_same_every_update": all(w == work[0] for w in work),
    }
    for k in ("versions", "reward_token_path", "critic_from", "config"):
        if k in res:
            out[k] = res[k]
    return out


def _cell(v, f: str) -> str:
    return f.format(v) if v is not None else "-"


def fmt_table(model: str, impls: dict) -> str:
    cols = list(impls)
    w = max(16, *(len(c) + 2 for c in cols))
    lines = [f"\n== {model} ==", f"{'':30}" + "".join(f"{c:>{w}}" for c in cols)]
    ref = impls.get("trl")
    rows = [("s / update (median)", "s_per_update", "{:.2f}"), ("  generate s", "generate_s", "{:.2f}"),
            ("  scoring forwards s", "scoring_fwd_s", "{:.2f}"), ("  training s", "train_s", "{:.2f}"),
            ("response tokens / s", "resp_tokens_per_s", "{:.1f}"), ("peak RSS GiB", "peak_rss_gb", "{:.2f}"),
            ("GFLOP / update", "gflops_per_update", "{:.0f}"), ("% of fp32 matmul rate", "pct_fp32_matmul", "{:.1f}")]
    for label, key, f in rows:
        lines.append(f"{label:30}" + "".join(f"{_cell(impls[c].get(key), f):>{w}}" for c in cols))
    work = [("sampled tokens", lambda x: x["sampled_tokens"]),
            ("generation forwards", lambda x: x["generation_calls"]),
            ("full fwds no grad (calls/rows)", lambda x: f"{x['full_nograd_calls']}/{x['full_nograd_rows']}"),
            ("full fwds grad (calls/rows)", lambda x: f"{x['full_grad_calls']}/{x['full_grad_rows']}"),
            ("trunks in memory / used", lambda x: f"{x['trunks_in_memory']}/{x['trunks_used']}")]
    lines.append("work per update (trunk forward hooks; the first timed update):")
    for label, get in work:
        lines.append(f"  {label:28}" + "".join(
            f"{str(get(impls[c]['work_per_update'])) if impls[c].get('work_per_update') else '-':>{w}}"
            for c in cols))
    steps = "".join(f"{str((impls[c].get('optimizer_steps_per_update') or ['-'])[0]):>{w}}" for c in cols)
    lines.append(f"{'  optimizer steps':30}{steps}")
    loads = "".join(f"{_cell(impls[c].get('loadavg_max_during'), '{:.2f}'):>{w}}" for c in cols)
    lines.append(f"{'max load avg during (2 cores)':30}{loads}")
    odd = [c for c in cols if not impls[c].get("work_same_every_update", True)]
    if odd:
        lines.append(f"note: the work differed between timed updates for {', '.join(odd)} (see the JSON)")
    for c in cols:
        if impls[c].get("config"):
            same = f" (the run of {impls[c]['same_run_as']})" if impls[c].get("same_run_as") else ""
            lines.append(f"{c}: {VARIANTS[c][0]}; resolved {impls[c]['config']}, critic from "
                         f"{impls[c].get('critic_from')}{same}")
    if ref:
        for c in cols:
            if c != "trl":
                r = impls[c]
                lines.append(f"ratio {c}/trl: s/update {r['s_per_update'] / ref['s_per_update']:.3f}, "
                             f"peak RSS {r['peak_rss_gb'] / ref['peak_rss_gb']:.3f}")
    return "\n".join(lines)


# the rows of issue 14: (row, model, tether variant, what it measures, target time ratio, target memory ratio) —
# the targets of issue 14's table (None: the issue sets none for that figure)
ISSUE14 = (
    ("a", "smollm2", "tether", "same config as TRL: time, memory", 0.65, 0.70),
    ("b", "tiny", "tether", "same config as TRL: time", 0.40, None),
    ("c", "smollm2", "tether_defaults", "tether's defaults: time, memory", 0.20, 0.30),
    ("d", "smollm2", "tether_lora", "LoRA r=16, separate critic: memory (time)", None, 0.25),
    ("d'", "smollm2", "tether_lora_shared", "LoRA r=16, shared value head: memory (time)", None, 0.25),
)
PLANS = {"issue14": ISSUE14,
         "issue14-tiny": tuple((r, "tiny", v, what, None, None) for r, _, v, what, _, _ in ISSUE14)}


def fmt_rows(plan: tuple, results: dict, watch: "LoadWatch") -> str:
    """The issue's rows: tether / TRL of this invocation, one TRL run per model as the denominator."""
    lines = ["\n== issue 14 rows (W1; ratios tether / TRL of this invocation) ==",
             f"{'row':4}{'model':9}{'variant':20}{'s/upd tether':>13}{'TRL':>8}{'ratio':>7}{'target':>8}"
             f"{'RSS tether':>11}{'TRL':>7}{'ratio':>7}{'target':>8}{'%fp32':>7}  measures"]
    for row, model, impl, what, t_time, t_mem in plan:
        r, ref = results[model][impl], results[model]["trl"]
        tr, mr = r["s_per_update"] / ref["s_per_update"], r["peak_rss_gb"] / ref["peak_rss_gb"]
        lines.append(f"{row:4}{model:9}{impl:20}{r['s_per_update']:13.2f}{ref['s_per_update']:8.2f}{tr:7.3f}"
                     f"{_cell(t_time, '≤{:.2f}'):>8}{r['peak_rss_gb']:11.2f}{ref['peak_rss_gb']:7.2f}{mr:7.3f}"
                     f"{_cell(t_mem, '≤{:.2f}'):>8}{_cell(r.get('pct_fp32_matmul'), '{:.0f}'):>7}  {what}")
    lines.append(f"load average (1 min, 2 cores): {watch.before:.2f} before start, {watch.max():.2f} at most "
                 "during the run")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=sorted(PLANS), default="issue14",
                    help="the rows to measure (ignored when --impl is given)")
    ap.add_argument("--models", default=None, help="with --impl: comma list of tiny, smollm2 (default both)")
    ap.add_argument("--impl", default=None, help=f"comma list of trl, {', '.join(VARIANTS)}: every model × impl "
                                                 "instead of a plan")
    ap.add_argument("--updates", type=int, default=2, help="timed updates (after 1 warm-up)")
    ap.add_argument("--out", default="runs/bench/ppo_vs_trl.json")
    ap.add_argument("--trl-venv", default=str(CACHE / "bench-trl-venv"))
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a._worker:  # child: one tether run
        spec = json.loads(Path(a._spec).read_text())
        res = tether_worker(Path(spec["model_dir"]), spec["updates"], a._worker, spec["prompts"])
        print("RESULT " + json.dumps(res), flush=True)
        return

    watch = LoadWatch()
    import torch
    import transformers

    if a.impl is not None:
        impls = [s.strip() for s in a.impl.split(",") if s.strip()]
        bad = [i for i in impls if i != "trl" and i not in VARIANTS]
        if bad:
            raise SystemExit(f"--impl: unknown {', '.join(bad)} (trl, {', '.join(VARIANTS)})")
        models = [s.strip() for s in (a.models or "tiny,smollm2").split(",") if s.strip()]
        todo = {m: list(impls) for m in models}
        plan: tuple = ()
    else:
        plan = PLANS[a.plan]
        todo = {}
        for _, model, impl, *_ in sorted(plan, key=lambda r: r[1] != "tiny"):  # the small model first
            todo.setdefault(model, ["trl"])
            if impl not in todo[model]:
                todo[model].append(impl)
    for m in todo:
        if m not in ("tiny", "smollm2"):
            raise SystemExit(f"--models: unknown model {m!r} (tiny, smollm2)")

    rates = {"fp32_gflops": matmul_rate("float32"), "bf16_gflops": matmul_rate("bfloat16"), "threads": THREADS,
             "size": 2048}
    print(f"load average before start {watch.before:.2f}; matmul rate ({THREADS} threads, 2048^3): fp32 "
          f"{rates['fp32_gflops']:.0f} GFLOP/s, bf16 {rates['bf16_gflops']:.0f} GFLOP/s", file=sys.stderr, flush=True)
    out_path = Path(a.out)
    report = {"workload": dict(prompts=PROMPTS, prompt_len=PROMPT_LEN, response_len=RESP_LEN, epochs=EPOCHS,
                               minibatches=1, micro_batch=MICRO, temperature=0.7, threads=THREADS, eos=False),
              "matmul": rates, "torch": torch.__version__, "transformers": transformers.__version__,
              "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "loadavg_before_start": watch.before, "updates_timed": a.updates, "models": {}}
    tables = []
    t_all = time.perf_counter()
    for model, impls in todo.items():
        mdir = build_models(model)
        prompts = make_prompts(mdir / "policy")
        n_lm, n_cls = matmul_params(mdir / "policy", "lm"), matmul_params(mdir / "reward", "cls")
        entry = {"matmul_params_lm": n_lm, "matmul_params_cls": n_cls, "impls": {}}
        with tempfile.TemporaryDirectory() as td:
            spec_path = Path(td) / "spec.json"
            for impl in impls:
                twin = next((o for o in entry["impls"] if o != "trl" and impl != "trl"
                             and same_run(impl, o, mdir, a.updates)), None)
                if twin is not None:  # the same resolved config: one run measures both
                    print(f"--- {model} / {impl}: the same config as {twin}; its run serves for both",
                          file=sys.stderr, flush=True)
                    entry["impls"][impl] = {**entry["impls"][twin], "same_run_as": twin}
                    continue
                print(f"--- {model} / {impl}", file=sys.stderr, flush=True)
                watch.label = f"{model}/{impl}"
                if impl != "trl":
                    spec_path.write_text(json.dumps({"model_dir": str(mdir), "updates": a.updates,
                                                     "prompts": prompts}))
                    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
                    res, rss = run_child([sys.executable, str(Path(__file__).resolve()), "--_worker", impl,
                                          "--_spec", str(spec_path)], env)
                else:
                    py = trl_python(Path(a.trl_venv))
                    script = Path(td) / "trl_w1.py"
                    script.write_text(TRL_SCRIPT)
                    spec_path.write_text(json.dumps({"model_dir": str(mdir), "updates": a.updates,
                                                     "prompts": prompts, "prompt_len": PROMPT_LEN,
                                                     "prompts_per_update": PROMPTS, "resp_len": RESP_LEN,
                                                     "epochs": EPOCHS, "micro": MICRO, "threads": THREADS,
                                                     "bench_dir": str(Path(__file__).resolve().parent)}))
                    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
                    res, rss = run_child([str(py), str(script), str(spec_path)], env)
                flops = flops_per_update(n_lm, n_cls, impl) if full_layout(res) else None
                entry["impls"][impl] = summarise(res, flops, rates, rss)
                entry["impls"][impl]["loadavg_max_during"] = watch.max(watch.label)
                entry["impls"][impl]["raw_rows"] = res["rows"]
                watch.label = "between"
        report["models"][model] = entry
        tables.append(fmt_table(model, entry["impls"]))
        print(tables[-1], flush=True)
        report["loadavg_max_during"] = watch.max()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))
    watch.stop()
    report["wall_s"] = time.perf_counter() - t_all
    report["loadavg_max_during"] = watch.max()
    if plan:
        summary = fmt_rows(plan, {m: e["impls"] for m, e in report["models"].items()}, watch)
        report["issue14_rows"] = [
            {"row": row, "model": model, "variant": impl, "measures": what, "target_time_ratio": t_time,
             "target_memory_ratio": t_mem,
             "time_ratio": report["models"][model]["impls"][impl]["s_per_update"]
             / report["models"][model]["impls"]["trl"]["s_per_update"],
             "memory_ratio": report["models"][model]["impls"][impl]["peak_rss_gb"]
             / report["models"][model]["impls"]["trl"]["peak_rss_gb"]}
            for row, model, impl, what, t_time, t_mem in plan]
        print(summary, flush=True)
    out_path.write_text(json.dumps(report, indent=1))
    print(f"\nmatmul: fp32 {rates['fp32_gflops']:.0f} GFLOP/s, bf16 {rates['bf16_gflops']:.0f} GFLOP/s; "
          f"{report['wall_s']:.0f} s in all; written {out_path}")


if __name__ == "__main__":
    main()
