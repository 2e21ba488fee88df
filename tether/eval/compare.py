"""Compare policies on held-out prompts: independent judges, the trained reward model, KL to the reference, and
fluency (perplexity of each completion under the frozen reference at T=1), with bootstrap CIs over prompts (and over
seeds, for a policy given as several runs).

Sampling uses the same pure sampling config as PPO (``tether.rollout.generate``); every policy is sampled with the
same seed. Per completion: judge scores on the completion text, the RM score of (prompt, completion), the sequence
KL ``Σ_t log π(y_t) − log π_ref(y_t)`` on the sampled tokens at the sampling temperature, and the reference
perplexity ``exp(−mean_t log π_ref(y_t))`` at T=1 (empty completions are left out of the perplexity).

Intervals (``tether.eval.stats``): every completion of a prompt moves together, so a resample draws prompts with
replacement (and, for a policy given as several runs — one per training seed —, runs too); paired differences and
win rates draw one set of prompts for both policies, so they are paired per prompt.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from pydantic import Field, model_validator

from tether.algos.parts import load_policy
from tether import console
from tether.config.base import DeviceName, OutputDir, Section
from tether.console import library_bars
from tether.console import progress as progress_bar
from tether.data.readers import load_prompts
from tether.engine.optim import derive_seed
from tether.errors import ConfigError, ModelError
from tether.eval.judges import get_judge
from tether.eval.stats import prompt_bootstrap_ci, prompt_bootstrap_diff, prompt_win_rate
from tether.models.load import load_tokenizer
from tether.rewards.reward_model import RewardModelScorer, same_tokenizer
from tether.rollout.generate import encode_prompts, generate, response_logprobs


class EvalConfig(Section):
    """Sample completions from each policy on held-out prompts and compare them (judges, RM, KL, perplexity)."""

    policies: dict[str, Union[str, list[str]]]
    """Policies to compare, name: model directory (e.g. {sft: runs/x/sft, ppo: runs/x/ppo/final}), or name: a list of
    directories, one run per training seed ({ppo: [runs/s0/ppo/final, runs/s1/ppo/final]}), whose intervals then
    resample seeds as well as prompts. The first is the baseline of the paired differences."""
    prompts: str
    """Prompt file (JSONL/CSV/parquet or datasets directory with a `prompt` or `messages` column)."""
    reference: str
    """Frozen reference policy directory (KL and perplexity are measured against it), usually the SFT model."""
    reward_model: Optional[str] = None
    """Trained reward-model directory to score completions with; null: no RM column."""
    judges: list[str] = Field(default_factory=lambda: ["vader", "textblob", "afinn"])
    """Independent judges (`vader`, `textblob`, `afinn`)."""
    num_prompts: Optional[int] = Field(None, ge=1)
    """Use only the first this many prompts; null: all."""
    samples_per_prompt: int = Field(1, ge=1)
    """Completions per prompt per policy."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature (KL is measured at this temperature, as in PPO)."""
    response_length: int = Field(32, ge=1)
    """Maximum new tokens per completion."""
    max_prompt_length: int = Field(128, ge=1)
    """Prompts longer than this keep their last max_prompt_length tokens."""
    micro_batch_size: int = Field(16, ge=1)
    """Sequences per generate/forward call."""
    seed: int = 0
    """Sampling seed (the same for every policy) and bootstrap seed."""
    device: DeviceName = "auto"
    """Where the policies, the reference and the reward model run: `auto` (CUDA when a GPU is visible, else the
    CPU), `cpu`, `cuda` or `cuda:N`; a CUDA device that is not there is refused in one line. The sampled tokens
    are drawn from CPU uniforms (tether.rollout.sampler), so they differ across devices only by logit rounding."""
    output_dir: OutputDir = "runs/eval"
    """Where results.json and samples.jsonl are written."""

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if not self.policies:
            raise ValueError("policies: give at least one name: directory")
        for name, dirs in self.policies.items():
            if isinstance(dirs, list) and not dirs:
                raise ValueError(f"policies.{name}: an empty list of run directories")
        return self


def _load(path: str, progress: bool = True, device: Union[str, torch.device] = "cpu"):
    """A policy directory ready to sample from (the shared loader), in eval mode, on ``device``."""
    model, tok = load_policy(path, pad_policy="add", progress=progress)
    return model.eval().to(device), tok


def run_dirs(dirs: Union[str, list[str]]) -> list[str]:
    """The run directories of one policy entry: one directory, or a list of them (one per seed)."""
    return [str(d) for d in dirs] if isinstance(dirs, (list, tuple)) else [str(dirs)]


def score_cells(rows: list[dict], metric: str, n_prompts: int, n_samples: int):
    """``(R, P, K)`` float array of ``metric`` from one policy's rows (run-major, then prompt, then completion, as
    :func:`evaluate_policies` samples them; ``row["run"]`` is the run index); NaN where a row has no value."""
    runs = 1 + max(int(r.get("run", 0)) for r in rows)
    x = np.full((runs, n_prompts, n_samples), np.nan)
    per_run: dict[int, int] = {}
    for r in rows:
        run = int(r.get("run", 0))
        j = per_run.get(run, 0)
        per_run[run] = j + 1
        if r.get(metric) is not None:
            x[run, j // n_samples, j % n_samples] = float(r[metric])
    return x


def _ci(x, seed: int) -> dict:
    if np.isnan(x).all():
        return {"mean": None, "lo": None, "hi": None, "n": 0, "n_prompts": 0, "n_runs": int(x.shape[0])}
    iv = prompt_bootstrap_ci(x, seed=seed)
    present = ~np.isnan(x)
    return {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": int(present.sum()),
            "n_prompts": int(present.any(axis=(0, 2)).sum()), "n_runs": int(x.shape[0])}


@torch.no_grad()
def sample_and_score(model, tok, ref, prompts: list[str], *, response_length: int, temperature: float,
                     max_prompt_length: int, micro_batch_size: int, seed: int, bar=None) -> list[dict]:
    """Sample one completion per prompt row; return per-completion KL to ``ref`` and reference NLL.
    ``bar``: a progress bar advanced by the number of prompts of each batch."""
    rows: list[dict] = []
    for b, start in enumerate(range(0, len(prompts), micro_batch_size)):
        texts = prompts[start : start + micro_batch_size]
        batch = encode_prompts(tok, texts, texts, max_prompt_length, "left")
        torch.manual_seed(derive_seed(seed, "eval", b))
        ro, _ = generate(model, tok, batch, response_length=response_length, temperature=temperature,
                         stop_at_eos=True, micro_batch_size=micro_batch_size)
        mask = ro.response_mask
        q = ro.query_length
        ref_t = response_logprobs(ref, ro.query_response, ro.attention_mask, q, temperature, micro_batch_size)
        ref_1 = response_logprobs(ref, ro.query_response, ro.attention_mask, q, 1.0, micro_batch_size)
        kl = torch.where(mask, ro.logprobs - ref_t.float(), 0.0).sum(1).cpu()  # one copy per batch, not per row
        n_tok = mask.sum(1).cpu()
        nll = -torch.where(mask, ref_1.float(), 0.0).sum(1).cpu()
        for i in range(len(texts)):
            n = int(n_tok[i])
            rows.append({"prompt": texts[i], "completion": ro.completions[i], "tokens": n,
                         "has_eos": bool(ro.has_eos[i]), "kl": float(kl[i]),
                         "ref_nll": float(nll[i]), "ref_ppl": math.exp(float(nll[i]) / n) if n else None})
        if bar is not None:
            bar.update(len(texts))
    return rows


def evaluate_policies(policies: dict[str, Union[str, list[str]]], prompts: list[str], judges: list[str],
                      reward_model_path: str | None, reference_path: str, n_samples: int = 1, temperature: float = 0.7,
                      seed: int = 0, *, response_length: int = 32, max_prompt_length: int = 128,
                      micro_batch_size: int = 16, output_dir: str | Path | None = None,
                      progress: bool = True, device: Union[str, torch.device] = "cpu") -> dict:
    """Sample ``n_samples`` completions per prompt from each policy, score them, and summarise with bootstrap CIs.

    ``policies``: name → a model directory, or a list of directories (one run per training seed). Returns
    ``{"policies": {name: {metric: {mean, lo, hi, n, n_prompts, n_runs}}}, "paired": {name: {metric: {mean, lo,
    hi, n_prompts, n_runs, excludes_0, win_rate: {mean, lo, hi}}}}, "resampled": "prompts" | "runs × prompts",
    "samples": {name: [rows]}, ...}``. Means pool every completion of every run; their intervals resample prompts
    (all completions of a prompt together) and a policy's runs (:func:`tether.eval.stats.prompt_bootstrap_ci`).
    Paired differences are ``policy − first policy``, paired per prompt (one prompt resample for both,
    :func:`tether.eval.stats.prompt_bootstrap_diff`); the win rate is the chance that the policy's completion of a
    prompt scores higher than the baseline's (ties ½; :func:`tether.eval.stats.prompt_win_rate`). With
    ``output_dir``: writes ``results.json`` and ``samples.jsonl`` there. ``device``: where every model runs (a
    torch device, or a ``device`` option's spelling, resolved by ``tether.engine.dist.resolve_device``).
    """
    if not policies:
        raise ConfigError("policies: give at least one name: directory")
    if not prompts:
        raise ConfigError("prompts: the prompt set is empty")
    from tether.engine.dist import resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    judge_fns = {name: get_judge(name) for name in judges}
    ref, ref_tok = _load(reference_path, progress, device)
    if ref.dtype != torch.float32:
        ref = ref.float()
    with library_bars(progress):
        rm = RewardModelScorer.from_path(reward_model_path) if reward_model_path else None
    if rm is not None:
        rm.model.to(device)
    texts = [p for p in prompts for _ in range(n_samples)]
    samples: dict[str, list[dict]] = {}
    n_runs = sum(len(run_dirs(d)) for d in policies.values())
    bar = progress_bar(total=len(texts) * n_runs, desc="eval", enabled=progress, unit="completion")
    for name, dirs in policies.items():
        samples[name] = []
        for run, path in enumerate(run_dirs(dirs)):
            model, tok = (ref, ref_tok) if str(path) == str(reference_path) else _load(path, progress, device)
            if not same_tokenizer(tok, ref_tok):
                bar.close()
                raise ModelError(f"{path}: policy {name!r} does not share the reference's tokenizer "
                                 f"({reference_path})")
            bar.set_description(f"eval {name}")
            rows = sample_and_score(model, ref_tok, ref, texts, response_length=response_length,
                                    temperature=temperature, max_prompt_length=max_prompt_length,
                                    micro_batch_size=micro_batch_size, seed=seed, bar=bar)
            comps = [r["completion"] for r in rows]
            for jn, fn in judge_fns.items():
                for r, s in zip(rows, fn(comps)):
                    r[jn] = float(s)
            if rm is not None:
                scores = rm([r["prompt"] for r in rows], comps, ended=[r["has_eos"] for r in rows])
                for r, s in zip(rows, scores.cpu().tolist()):
                    r["rm"] = float(s)
            for r in rows:
                r["policy"] = name
                r["run"] = run
            samples[name] += rows
            if model is not ref:
                del model
            if progress:
                bar.write(f"[eval] {name}{f' run {run}' if len(run_dirs(dirs)) > 1 else ''}: {len(rows)} "
                          "completions scored", file=sys.stdout)
                sys.stdout.flush()
    bar.close()

    metrics = [*judges, *(["rm"] if rm is not None else []), "kl", "ref_ppl", "tokens"]
    cells = {name: {m: score_cells(rows, m, len(prompts), n_samples) for m in metrics} for name, rows in
             samples.items()}
    summary = {name: {m: _ci(cells[name][m], seed) for m in metrics} for name in samples}
    base = next(iter(policies))
    paired: dict[str, dict] = {}
    for name in samples:
        if name == base:
            continue
        paired[name] = {}
        for m in metrics:
            a, b = cells[base][m], cells[name][m]
            if np.isnan(a).all() or np.isnan(b).all():
                continue
            d = prompt_bootstrap_diff(a, b, seed=seed)
            w = prompt_win_rate(a, b, seed=seed)
            both = (~np.isnan(a)).any(axis=(0, 2)) & (~np.isnan(b)).any(axis=(0, 2))
            paired[name][m] = {"mean": d.mean, "lo": d.lo, "hi": d.hi, "n_prompts": int(both.sum()),
                               "n_runs": [int(a.shape[0]), int(b.shape[0])],
                               "excludes_0": bool(d.lo > 0 or d.hi < 0),
                               "win_rate": {"mean": w.mean, "lo": w.lo, "hi": w.hi}}
    resampled = "runs × prompts" if any(len(run_dirs(d)) > 1 for d in policies.values()) else "prompts"
    results = {"baseline": base, "policies": summary, "paired": paired, "metrics": metrics, "resampled": resampled,
               "settings": {"n_prompts": len(prompts), "n_samples": n_samples, "temperature": temperature,
                            "response_length": response_length, "seed": seed, "reference": str(reference_path),
                            "reward_model": reward_model_path, "policies": dict(policies)},
               "samples": samples}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "samples"},
                                                     indent=1), encoding="utf-8")
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            for rows in samples.values():
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return results


def format_table(results: dict, n_examples: int = 3) -> str:
    """The before/after table: mean [95% CI] per policy and metric, the paired difference, then sample completions."""
    names = list(results["policies"])
    base = results["baseline"]

    def cell(s: dict) -> str:
        if s.get("mean") is None:
            return "n/a"
        return f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"

    header = ["metric", *names, *[f"{n}−{base}" for n in results["paired"]],
              *[f"{n}>{base} win rate" for n in results["paired"]]]
    scored = [m for m in results["metrics"] if m not in ("kl", "ref_ppl", "tokens")]  # higher is better
    lines = []
    for m in results["metrics"]:
        row = [m, *[cell(results["policies"][n][m]) for n in names]]
        for n in results["paired"]:
            d = results["paired"][n].get(m)
            row.append("n/a" if d is None else cell(d) + (" *" if d["excludes_0"] else ""))
        for n in results["paired"]:
            w = (results["paired"][n].get(m) or {}).get("win_rate")
            row.append(cell(w) if w is not None and m in scored else "")
        lines.append(row)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths]), *[fmt.format(*r) for r in lines]]
    over = results.get("resampled", "prompts")
    out.append(f"mean [95% bootstrap CI, resampling {over}: all completions of a prompt together]; * = the paired "
               "(per prompt) difference's CI excludes 0; win rate = chance a completion beats the baseline's for the "
               "same prompt (ties ½); kl = Σ log π − log π_ref (nats/seq); ref_ppl = perplexity under the reference "
               "at T=1")
    for n in names:
        out.append(f"\n{n} samples:")
        for r in results["samples"][n][:n_examples]:
            extra = " ".join(f"{j}={r[j]:+.2f}" for j in results["metrics"] if j in r and j not in
                             ("kl", "ref_ppl", "tokens") and r[j] is not None)
            out.append(f"  {r['prompt']!r} → {r['completion']!r}  ({extra})")
    return "\n".join(out)


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate as an ``EvalConfig`` says, print the table, write results.json and samples.jsonl."""
    from tether.engine.dist import resolve_device

    device = resolve_device(cfg.device)  # a missing GPU: one line, before any model loads
    for name, dirs in cfg.policies.items():
        for path in run_dirs(dirs):
            if not any((Path(path) / f).is_file() for f in ("config.json", "adapter_config.json")):
                raise ModelError(f"{path}: policy {name!r} is not a model directory (no config.json) nor an adapter "
                                 "run (no adapter_config.json)")
    if not (Path(cfg.reference) / "config.json").is_file():
        raise ModelError(f"{cfg.reference}: reference is not a model directory (no config.json)")
    prompts = load_prompts(cfg.prompts, load_tokenizer(cfg.reference))  # chat prompts through the policy's template
    if cfg.num_prompts is not None:
        prompts = prompts[: cfg.num_prompts]
    res = evaluate_policies(cfg.policies, prompts, cfg.judges, cfg.reward_model, cfg.reference,
                            cfg.samples_per_prompt, cfg.temperature, cfg.seed, response_length=cfg.response_length,
                            max_prompt_length=cfg.max_prompt_length, micro_batch_size=cfg.micro_batch_size,
                            output_dir=cfg.output_dir, device=device)
    console.out(format_table(res))
    return res
