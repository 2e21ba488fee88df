"""`tether compare`: several methods on one task at a matched budget, over seeds, in one report (docs/compare.md).

1. the task: ``task: demo`` runs the demo's data and first two stages under ``demo_dir`` when absent (finished ones
   are reused); otherwise the SFT model, reward and prompts are given;
2. training: each method × seed from the SFT model into ``output_dir/<method>/seed<k>/`` with the config
   ``CompareConfig.stage_config`` builds (the budget wired in); a finished run is reused, an interrupted one continues
   from its newest checkpoint, so a re-invoked compare carries on where it stopped;
3. the SFT model's held-out evaluation with each run's own evaluation settings (the baseline of the gains during
   training), cached in ``sft_heldout.json``;
4. one final evaluation of SFT and every run (``tether.eval.compare.evaluate_policies``, each method given as the list
   of its seeds' ``final/``, so its intervals resample seeds and prompts);
5. ``compare.json``, ``compare.md`` (the table) and ``frontier.html`` (judge gain against √KL per method).

The pure parts (the held-out curve of a run, time-to-quality, the frontier averaged over seeds, the summary rows) are
functions of ``metrics.jsonl`` records, tested on hand-made ones.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from tether import console
from tether.config.compare import METHODS, CompareConfig

TRAIN_TIME_KEYS = ("time/rollout_s", "time/score_s", "time/update_s")
"""The per-update seconds whose running sum is a run's training time (held-out evaluations and checkpoints are not
counted, as in the run report's wall times)."""


# ----------------------------------------------------------------------------------------------- pure parts
def _num(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def heldout_curve(records: Sequence[Mapping[str, Any]], baseline: Mapping[str, float],
                  judges: Sequence[str]) -> list[dict[str, Any]]:
    """The held-out evaluations of one run, in order: ``{update, train_s, sampled_tokens, kl, sqrt_kl, gain:
    {judge: eval/<judge> − baseline[judge]}}`` per record that holds ``eval/*``. ``train_s`` and ``sampled_tokens``
    are running sums up to and including that update (of ``TRAIN_TIME_KEYS`` and ``rollout/sampled_tokens``);
    ``baseline``: the SFT model's ``eval/*`` with the same evaluation settings."""
    out, t, tokens = [], 0.0, 0.0
    for r in records:
        t += sum(_num(r.get(k)) or 0.0 for k in TRAIN_TIME_KEYS)
        tokens += _num(r.get("rollout/sampled_tokens")) or 0.0
        gains = {j: r[f"eval/{j}"] - baseline[f"eval/{j}"] for j in judges
                 if _num(r.get(f"eval/{j}")) is not None and _num(baseline.get(f"eval/{j}")) is not None}
        if not gains:
            continue
        kl = _num(r.get("eval/kl"))
        out.append({"update": int(r["update"]), "train_s": t, "sampled_tokens": tokens, "kl": kl,
                    "sqrt_kl": math.sqrt(max(kl, 0.0)) if kl is not None else None, "gain": gains})
    return out


def time_to_quality(curve: Sequence[Mapping[str, Any]], judge: str, threshold: float) -> Optional[dict[str, Any]]:
    """The first point of a held-out curve whose ``gain[judge]`` reaches ``threshold``: ``{update, train_s,
    sampled_tokens}``; None when no evaluation of the run reached it."""
    for p in curve:
        g = p["gain"].get(judge)
        if g is not None and g >= threshold:
            return {"update": p["update"], "train_s": p["train_s"], "sampled_tokens": p["sampled_tokens"]}
    return None


def frontier(curves: Sequence[Sequence[Mapping[str, Any]]], judges: Sequence[str]) -> list[dict[str, Any]]:
    """One method's frontier: the SFT origin ``(update 0, √KL 0, gain 0)``, then per update evaluated in any seed's
    curve the mean over the seeds evaluated there of √KL and of each judge's gain (``n_seeds`` says how many)."""
    by_update: dict[int, list[Mapping[str, Any]]] = {}
    for curve in curves:
        for p in curve:
            by_update.setdefault(int(p["update"]), []).append(p)
    origin = {"update": 0, "sqrt_kl": 0.0, "gain": {j: 0.0 for j in judges}, "n_seeds": len(curves)}
    out: list[dict[str, Any]] = [origin]
    for u in sorted(by_update):
        pts = by_update[u]
        xs = [p["sqrt_kl"] for p in pts if p.get("sqrt_kl") is not None]
        gain = {}
        for j in judges:
            vals = [p["gain"][j] for p in pts if p["gain"].get(j) is not None]
            gain[j] = sum(vals) / len(vals) if vals else None
        out.append({"update": u, "sqrt_kl": sum(xs) / len(xs) if xs else None, "gain": gain, "n_seeds": len(pts)})
    return out


def run_totals(records: Sequence[Mapping[str, Any]], sequences_per_update: int) -> dict[str, Any]:
    """One run's budget as its metrics show it: ``updates`` (the last ``update``, or ``step`` of an offline stage),
    ``train_s`` (the sum of ``TRAIN_TIME_KEYS``, or the last ``time/elapsed_s`` of an offline stage),
    ``sampled_tokens`` (the sum of ``rollout/sampled_tokens``), ``response_tokens`` (Σ ``response/length_mean`` ×
    sequences: the valid tokens up to EOS) and ``completions`` (updates × sequences)."""
    steps = [int(r.get("update", r.get("step", 0)) or 0) for r in records]
    updates = max(steps, default=0)
    train_s = sum(_num(r.get(k)) or 0.0 for r in records for k in TRAIN_TIME_KEYS)
    if not any(k in r for r in records for k in TRAIN_TIME_KEYS):  # an offline stage logs its elapsed time instead
        train_s = max((_num(r.get("time/elapsed_s")) or 0.0 for r in records), default=0.0)
    return {"updates": updates,
            "train_s": train_s,
            "sampled_tokens": int(round(sum(_num(r.get("rollout/sampled_tokens")) or 0.0 for r in records))),
            "response_tokens": int(round(sum((_num(r.get("response/length_mean")) or 0.0) * sequences_per_update
                                             for r in records))),
            "completions": updates * sequences_per_update}


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(cfg: CompareConfig, results: Mapping[str, Any], runs: Mapping[str, Mapping[int, Mapping[str, Any]]]
              ) -> dict[str, Any]:
    """The report's numbers per method: the final evaluation's gains over SFT (paired, intervals over seeds and
    prompts) and win rates per judge (and the RM), KL and reference perplexity, the budget each seed used, and
    time-to-quality and the frontier from the held-out evaluations during training. ``runs``: method → seed →
    ``{records, curve, totals}``."""
    judges = list(cfg.judges)
    quality = judges[0]
    out: dict[str, Any] = {}
    for m in cfg.methods:
        paired = results["paired"].get(m, {})
        pol = results["policies"][m]
        seeds = runs[m]
        ttq = {s: time_to_quality(r["curve"], quality, cfg.quality_threshold) for s, r in seeds.items()}
        reached = [v for v in ttq.values() if v is not None]
        evaluated = any(r["curve"] for r in seeds.values())  # an offline method has no evaluations during training
        totals = {s: r["totals"] for s, r in seeds.items()}
        out[m] = {
            "stage": METHODS[m].stage,
            "gain": {k: {x: paired[k][x] for x in ("mean", "lo", "hi", "excludes_0", "n_prompts", "n_runs")}
                     for k in [*judges, "rm"] if k in paired},
            "win_rate": {k: paired[k]["win_rate"] for k in [*judges, "rm"] if k in paired},
            "kl": pol["kl"], "ref_ppl": pol["ref_ppl"],
            "budget": {"per_seed": totals,
                       "train_s_mean": _mean([t["train_s"] for t in totals.values()]),
                       "sampled_tokens": sorted({t["sampled_tokens"] for t in totals.values()}),
                       "completions": sorted({t["completions"] for t in totals.values()}),
                       "updates": sorted({t["updates"] for t in totals.values()})},
            "time_to_quality": {"judge": quality, "threshold": cfg.quality_threshold, "per_seed": ttq,
                                "reached": f"{len(reached)}/{len(ttq)}" if evaluated else "n/a",
                                "train_s_mean": _mean([v["train_s"] for v in reached]),
                                "update_mean": _mean([float(v["update"]) for v in reached])},
            "frontier": frontier([r["curve"] for r in seeds.values()], judges),
        }
    return out


def _iv(d: Optional[Mapping[str, Any]], signed: bool = True) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(d['mean'])} [{f.format(d['lo'])}, {f.format(d['hi'])}]"


def _span(xs: Sequence[Any]) -> str:
    return "n/a" if not xs else str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]}"


def format_markdown(cfg: CompareConfig, summary: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """compare.md: the table (per method and judge the gain over SFT [95 % CI] and the win rate, KL, reference
    perplexity, training time, time-to-quality, updates and tokens sampled) and what it was made with."""
    judges = list(cfg.judges)
    has_rm = any("rm" in s["gain"] for s in summary.values())
    sft_ppl = results["policies"]["sft"]["ref_ppl"]["mean"]
    head = ["method", *[f"{j} gain over SFT [95 % CI] · win rate" for j in judges],
            *(["RM gain · win rate"] if has_rm else []), "KL to SFT (nats/seq)",
            f"ref perplexity (SFT {sft_ppl:.2f})" if sft_ppl is not None else "ref perplexity",
            "train time (s, mean over seeds)",
            f"time-to-quality ({judges[0]} gain ≥ {cfg.quality_threshold:g}): s · update · seeds", "updates",
            "completions", "sampled tokens"]
    rows = []
    for m, s in summary.items():
        def g(k):
            w = s["win_rate"].get(k)
            return _iv(s["gain"].get(k)) + (" *" if s["gain"].get(k, {}).get("excludes_0") else "") + (
                f" · {w['mean']:.2f}" if w else "")
        t = s["time_to_quality"]
        ttq = (f"{t['train_s_mean']:.0f} · {t['update_mean']:.1f} · {t['reached']}" if t["train_s_mean"] is not None
               else "n/a (no evaluations during training)" if t["reached"] == "n/a"
               else f"not reached · {t['reached']}")
        b = s["budget"]
        rows.append([m, *[g(j) for j in judges], *([g("rm")] if has_rm else []), _iv(s["kl"], False),
                     _iv(s["ref_ppl"], False), f"{b['train_s_mean']:.0f}" if b["train_s_mean"] is not None else "n/a",
                     ttq, _span(b["updates"]), _span(b["completions"]), _span(b["sampled_tokens"])])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
    st = results["settings"]
    over = results["resampled"]
    return "\n".join([
        f"# tether compare: {', '.join(cfg.methods)} × seeds {cfg.seeds}", "",
        f"Budget: {cfg.budget} — {cfg.completions_per_update} completions per update, "
        + (f"{cfg.num_updates} updates" if cfg.budget == "tokens" else f"{cfg.time_limit_s:g} s per run (at most "
           f"{cfg.num_updates} updates)") + f", response_length {st['response_length']}.", "",
        *lines, "",
        f"Final evaluation: {st['n_prompts']} held-out prompts × {st['n_samples']} completions per run, temperature "
        f"{st['temperature']}; intervals resample {over} (95 % bootstrap; * = the paired difference's interval "
        "excludes 0); win rate = the chance a method's completion beats SFT's for the same prompt (ties ½). KL and "
        "perplexity are under the SFT reference. Train time sums each update's rollout, scoring and optimisation "
        "seconds (evaluations and checkpoints not counted); time-to-quality is the first held-out evaluation during "
        "training whose gain over SFT reached the threshold (mean over the seeds that reached it). Sampled tokens are "
        "the sum of rollout/sampled_tokens over a run (a range when the seeds differ). The frontier is frontier.html.",
        ""])


def frontier_html(cfg: CompareConfig, summary: Mapping[str, Any], path: Path) -> Optional[Path]:
    """frontier.html: per judge, gain over SFT against √KL, one curve per method (the seeds' mean at each evaluated
    update, from the SFT origin); plotly.js embedded. None (and a note) when plotly is missing."""
    try:
        from tether.monitor.report_figures import COLORS, figure_html, plotly_js

        js = plotly_js()
    except ImportError as err:
        console.out(f"[compare] frontier.html not written: {err}")
        return None
    divs = []
    for i, j in enumerate(cfg.judges):
        data = []
        for k, (m, s) in enumerate(summary.items()):
            pts = [p for p in s["frontier"] if p["sqrt_kl"] is not None and p["gain"].get(j) is not None]
            data.append({"type": "scatter", "mode": "lines+markers", "name": m, "legendgroup": m,
                         "showlegend": i == 0, "line": {"color": COLORS[k % len(COLORS)]},
                         "x": [p["sqrt_kl"] for p in pts], "y": [p["gain"][j] for p in pts],
                         "text": [f"update {p['update']} ({p['n_seeds']} seeds)" for p in pts],
                         "hovertemplate": "%{text}<br>√KL %{x:.3f}<br>gain %{y:+.3f}<extra>" + m + "</extra>"})
        fig = {"data": data, "layout": {"height": 420, "title": {"text": f"{j}: held-out gain over SFT vs √KL"},
                                         "xaxis": {"title": {"text": "√(KL to SFT, nats/seq)"},
                                                   "rangemode": "tozero"},
                                         "yaxis": {"title": {"text": f"{j} gain over SFT"}}}}
        divs.append(figure_html(fig, f"frontier-{i}"))
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tether compare: frontier</title>"
            f"<script>{js}</script></head><body><h1>Judge gain against √KL</h1><p>Held-out evaluations during "
            f"training (every {cfg.eval_every} updates and at the last), each point the mean over the seeds "
            "evaluated at that update; the origin is SFT.</p>" + "\n".join(divs) + "</body></html>\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------- orchestration
def prepare_task(cfg: CompareConfig, *, progress: bool = True) -> dict[str, Optional[str]]:
    """The task's paths; with ``task: demo``, the demo's data and its SFT and RM stages are made under ``demo_dir``
    when absent (finished stages are reused)."""
    if cfg.task == "demo":
        from tether.assets import minilm_path, prepare_demo_data, smollm2_path
        from tether.pipeline import run_rm, run_sft

        demo = cfg.demo_config()
        smollm2_path()
        minilm_path()
        prepare_demo_data(demo.data_dir, demo.seed, n_sft_train=demo.n_sft_train, n_sft_eval=demo.n_sft_eval,
                          n_pairs_train=demo.n_pairs_train, n_pairs_eval=demo.n_pairs_eval,
                          n_prompts_train=demo.n_prompts_train, n_prompts_eval=demo.n_prompts_eval)
        run_sft(demo.sft, progress=progress)
        run_rm(demo.rm, progress=progress)
    paths = cfg.task_paths
    from tether.errors import ModelError

    if not (Path(str(paths["sft"])) / "config.json").is_file():
        raise ModelError(f"{paths['sft']}: sft is not a model directory (no config.json)")
    return paths


def _train_ppo(stage_cfg) -> Path:
    from tether.algos.ppo_trainer import PPOTrainer

    PPOTrainer(stage_cfg).train()
    return Path(stage_cfg.output_dir) / "final"


def _train_dpo(stage_cfg) -> Path:
    from tether.algos.dpo import train_dpo

    train_dpo(stage_cfg, progress=sys.stderr.isatty())
    return Path(stage_cfg.output_dir) / "final"


TRAINERS: dict[str, Callable[[Any], Path]] = {"ppo": _train_ppo, "dpo": _train_dpo}
"""Stage name (``Method.stage``) → a function that trains (or continues) one run from its config and returns the
directory of its final policy."""


def train_runs(cfg: CompareConfig) -> dict[str, dict[int, Path]]:
    """Every method × seed, seeds outermost (so an early stop leaves every method with runs); a finished run is
    reused as it is. Returns method → seed → the final policy directory."""
    from tether.pipeline import finished

    out: dict[str, dict[int, Path]] = {m: {} for m in cfg.methods}
    n, i = len(cfg.methods) * len(cfg.seeds), 0
    for seed in cfg.seeds:
        for m in cfg.methods:
            i += 1
            sc = cfg.stage_config(m, seed)
            final = Path(sc.output_dir) / "final"
            if finished(sc):
                console.out(f"[compare] {i}/{n} {m} seed {seed}: finished run reused ({final})")
                out[m][seed] = final
            else:
                console.out(f"[compare] {i}/{n} {m} seed {seed}: training -> {sc.output_dir}")
                t0 = time.perf_counter()
                out[m][seed] = TRAINERS[METHODS[m].stage](sc)
                console.out(f"[compare] {m} seed {seed}: done in {time.perf_counter() - t0:.0f}s")
            if not cfg.keep_run_checkpoints:  # a finished run is reused from final/; its checkpoints only take disk
                shutil.rmtree(Path(sc.output_dir) / "checkpoints", ignore_errors=True)
    return out


def _heldout_key(sc) -> str:
    """What the SFT baseline of a run's held-out evaluation depends on (the evaluator's settings and prompts)."""
    mon = sc.monitor
    return json.dumps([sc.seed, str(mon.eval_prompts), mon.eval_num_prompts, list(mon.judges), mon.eval_greedy,
                       sc.response_length, sc.temperature, sc.max_prompt_length, sc.micro_batch_size])


def sft_baselines(cfg: CompareConfig, paths: Mapping[str, Optional[str]]) -> dict[str, dict[str, float]]:
    """The SFT model's ``eval/*`` under each distinct held-out evaluation setting of the runs (seed, prompts,
    sampling), keyed by :func:`_heldout_key`; cached in ``output_dir/sft_heldout.json``."""
    from tether.algos.parts import load_policy
    from tether.eval.heldout import ppo_heldout

    cache = Path(cfg.output_dir) / "sft_heldout.json"
    known: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    configs = {_heldout_key(sc): sc for sc in (cfg.stage_config(m, s) for s in cfg.seeds for m in cfg.methods
                                               if METHODS[m].stage == "ppo")}
    todo = {k: sc for k, sc in configs.items() if k not in known}
    if todo:
        policy, tok = load_policy(str(paths["sft"]), pad_policy="add", progress=False)
        policy.eval()
        for k, sc in todo.items():
            held = ppo_heldout(sc, policy, tok, [], policy)
            known[k] = held() if held is not None else {}
        del policy
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        tmp.replace(cache)
    return {k: known[k] for k in configs}


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the whole comparison as ``cfg`` says (module docstring); returns the content of compare.json."""
    from tether.data.readers import load_prompts
    from tether.engine.run_dir import read_jsonl
    from tether.eval.compare import evaluate_policies
    from tether.models.load import load_tokenizer

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    t_all = time.perf_counter()
    out = Path(cfg.output_dir)
    progress = sys.stderr.isatty()
    paths = prepare_task(cfg, progress=progress)
    # the held-out prompts are read before any training, so a bad file fails in seconds, not after the runs
    prompts = load_prompts(str(paths["eval_prompts"]), load_tokenizer(str(paths["sft"])))
    if cfg.num_prompts is not None:
        prompts = prompts[: cfg.num_prompts]
    console.out(f"[compare] {len(cfg.methods)} methods × {len(cfg.seeds)} seeds, budget {cfg.budget} -> {out}")
    finals = train_runs(cfg)
    baselines = sft_baselines(cfg, paths)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for m in cfg.methods:
        runs[m] = {}
        for seed in cfg.seeds:
            sc = cfg.stage_config(m, seed)
            records = read_jsonl(Path(sc.output_dir) / "metrics.jsonl")
            sampling = METHODS[m].stage == "ppo"
            base = baselines[_heldout_key(sc)] if sampling else {}
            runs[m][seed] = {"curve": heldout_curve(records, base, cfg.judges),
                             "totals": run_totals(records, sc.rollout_batch_size * sc.samples_per_prompt
                                                  if sampling else 0)}

    sampled = [m for m in cfg.methods if METHODS[m].stage == "ppo"]
    # the final evaluation samples at the sampling methods' settings (the shared ppo options with only dpo)
    first = cfg.stage_config(sampled[0] if sampled else "ppo", cfg.seeds[0])
    policies: dict[str, Any] = {"sft": str(paths["sft"])}
    policies.update({m: [str(finals[m][s]) for s in cfg.seeds] for m in cfg.methods})
    console.out(f"[compare] final evaluation: SFT and {sum(len(v) for v in finals.values())} runs on {len(prompts)} "
                f"held-out prompts × {cfg.eval_samples}")
    results = evaluate_policies(policies, prompts, list(cfg.judges), paths["reward_model"], str(paths["sft"]),
                                cfg.eval_samples, first.temperature, cfg.seeds[0],
                                response_length=first.response_length, max_prompt_length=first.max_prompt_length,
                                micro_batch_size=16, output_dir=out / "eval", progress=progress)
    summary = summarize(cfg, results, runs)
    report = {"methods": summary, "resampled": results["resampled"],
              "settings": {"budget": cfg.budget, "completions_per_update": cfg.completions_per_update,
                           "num_updates": cfg.num_updates, "time_limit_s": cfg.time_limit_s, "seeds": list(cfg.seeds),
                           "judges": list(cfg.judges), "quality_threshold": cfg.quality_threshold,
                           "task": {k: v for k, v in paths.items()}, "evaluation": results["settings"]},
              "curves": {m: {str(s): r["curve"] for s, r in v.items()} for m, v in runs.items()},
              "eval": {k: v for k, v in results.items() if k not in ("samples", "settings")},
              "wall_s": time.perf_counter() - t_all}
    _write_text(out / "compare.json", json.dumps(report, indent=1, default=str))
    md = format_markdown(cfg, summary, results)
    _write_text(out / "compare.md", md)
    fig = frontier_html(cfg, summary, out / "frontier.html")
    console.out(md)
    console.out(f"[compare] done in {report['wall_s']:.0f}s -> {out / 'compare.md'}, {out / 'compare.json'}"
                + (f", {fig}" if fig else ""))
    return report


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
