"""The offline RLHF demo: SmolLM2-135M learns to continue movie-review openings positively.

1. assets: SmolLM2-135M-Instruct (dequantised from the PyPI GGUF), all-MiniLM-L6-v2, the VADER paper's human ratings;
2. data (``prepare_demo_data``): SFT continuations, human preference pairs (group = domain), PPO and held-out prompts;
3. SFT → reward model → PPO (``tether.pipeline``; reward = the trained MiniLM RM, never a judge);
4. evaluation of SFT vs PPO on held-out prompts with VADER, TextBlob, AFINN, the RM, KL to SFT and the reference
   perplexity (``tether.eval.compare``); the table is printed and everything is saved under ``output_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tether.config.pipeline import DemoConfig
from tether import console
from tether.pipeline import run_pipeline


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole demo as ``cfg`` says; returns ``{"stages": ..., "eval": results, "wall_s": ...}``."""
    from tether.assets import minilm_path, prepare_demo_data, smollm2_path
    from tether.eval.compare import evaluate_policies, format_table

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    t_all = time.perf_counter()
    walls: dict[str, float] = {}
    out = Path(cfg.output_dir)

    t0 = time.perf_counter()
    console.out("[assets] SmolLM2-135M-Instruct, all-MiniLM-L6-v2, VADER human ratings")
    smollm2_path()
    minilm_path()
    paths = prepare_demo_data(
        cfg.data_dir, cfg.seed, n_sft_train=cfg.n_sft_train, n_sft_eval=cfg.n_sft_eval,
        n_pairs_train=cfg.n_pairs_train, n_pairs_eval=cfg.n_pairs_eval, n_prompts_train=cfg.n_prompts_train,
        n_prompts_eval=cfg.n_prompts_eval,
    )
    counts = json.loads(Path(paths["stats"]).read_text())["counts"]
    walls["assets+data"] = time.perf_counter() - t0
    console.out(f"[data] {', '.join(f'{k} {v}' for k, v in counts.items())} -> {cfg.data_dir}")

    stages = run_pipeline(cfg)
    for k in ("sft", "rm", "ppo"):
        walls[k] = stages[k]["wall_s"]

    t0 = time.perf_counter()
    console.out(f"[eval] SFT vs PPO on {counts['prompts_eval']} held-out prompts × {cfg.eval_samples}")
    prompts = [json.loads(line)["prompt"] for line in Path(paths["prompts_eval"]).read_text().splitlines() if line]
    ppo_final = str(Path(cfg.ppo.output_dir) / "final")
    results = evaluate_policies(
        {"sft": cfg.sft.output_dir, "ppo": ppo_final}, prompts, cfg.judges, cfg.rm.output_dir, cfg.sft.output_dir,
        cfg.eval_samples, cfg.ppo.temperature, cfg.seed, response_length=cfg.ppo.response_length,
        max_prompt_length=cfg.ppo.max_prompt_length, micro_batch_size=16, output_dir=out / "eval",
    )
    walls["eval"] = time.perf_counter() - t0
    walls["total"] = time.perf_counter() - t_all
    console.out(format_table(results))

    target = target_met(results)
    from tether.config.pipeline import DEMO_TARGET

    met = "met" if target["met"] else "not met"
    console.out(f"[demo] target (PPO > SFT on {', '.join(DEMO_TARGET['judges'])}, paired CIs excluding 0, ref "
                f"perplexity within +{DEMO_TARGET['ppl_ratio_max'] - 1:.0%}): {met} — {target['why']}")
    console.out("[demo] wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in walls.items()))
    summary = {"wall_s": walls, "stages": stages, "target": target, "data": counts,
               "results": {k: v for k, v in results.items() if k != "samples"}}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    _write_report(out)
    console.out(f"[demo] saved under {out}")
    return {"stages": stages, "eval": results, "wall_s": walls, "target": target}


def _write_report(out: Path) -> None:
    """The HTML report of the whole demo (stages, PPO curves, judges vs √KL); a warning if it cannot be made."""
    try:
        from tether.monitor.report import write_report

        console.out(f"[demo] report: {write_report([out], out / 'report.html')}")
    except (ImportError, OSError, ValueError) as err:
        console.out(f"[demo] report not written: {err}")


def target_met(results: dict) -> dict:
    """The demo's evidence bar (``tether.config.pipeline.DEMO_TARGET``): PPO beats SFT on every target judge (paired
    95 % CI above 0) with the reference perplexity within the bound of SFT's; the KL and each judge's win rate are
    reported alongside."""
    from tether.config.pipeline import DEMO_TARGET

    paired = results["paired"].get("ppo", {})
    pol = results["policies"]
    ok, why = True, []
    for j in DEMO_TARGET["judges"]:
        d = paired.get(j)
        good = d is not None and d["lo"] > 0
        ok &= good
        win = (d or {}).get("win_rate")
        why.append(f"{j} Δ {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                   + (f", win rate {win['mean']:.2f}" if win else "") if d else f"{j} n/a")
    try:
        ratio = pol["ppo"]["ref_ppl"]["mean"] / pol["sft"]["ref_ppl"]["mean"]
    except (KeyError, TypeError, ZeroDivisionError):
        ratio = float("inf")
    ok &= ratio <= DEMO_TARGET["ppl_ratio_max"]
    why.append(f"ppl ratio {ratio:.3f} (limit {DEMO_TARGET['ppl_ratio_max']})")
    kl = pol.get("ppo", {}).get("kl", {}).get("mean")
    if kl is not None:
        why.append(f"KL {kl:.2f} nats/seq")
    return {"met": bool(ok), "why": "; ".join(why), "ppl_ratio": ratio}
