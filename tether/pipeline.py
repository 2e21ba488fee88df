"""Run SFT → reward model → PPO (or SFT → DPO), each stage's output feeding the next (wiring:
``tether.config.pipeline``).

A stage is skipped when its output directory already holds its finished model made with the same config (up to the
fields a resume may change; ``tether.engine.run_dir``) and no stage before it was re-run; an interrupted stage
continues from its newest checkpoint. A stage after one that ran (or with ``force``) starts over (``restart``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tether.console import out


def finished(cfg: Any, *, force: bool = False) -> bool:
    """True when the stage of ``cfg`` has nothing left to do: its finished model is saved with a compatible config.
    Raises ``CheckpointError`` (one line) when its output directory holds a run that this config cannot continue."""
    from tether.engine.run_dir import stage_run_dir

    from tether.engine.dist import setup

    dist = setup(cfg.device, shards="sharding" in type(cfg).model_fields)
    return stage_run_dir(cfg, restart=force, dist=dist).finished


def _where(output_dir, *models: str) -> str:
    """`` -> final runs/x/final, best runs/x/best, report runs/x/report.html``: the end line's pointers to what the
    stage left in ``output_dir`` (``model`` = the directory itself; only what exists is named)."""
    root = Path(output_dir)
    found = [(name, root if name == "model" else root / name) for name in models]
    found.append(("report", root / "report.html"))
    shown = [f"{name} {path}" for name, path in found if path.exists()]
    return (" -> " + ", ".join(shown)) if shown else ""


def run_sft(cfg, *, force: bool = False, progress: bool = True) -> dict:
    from tether.algos.sft import train_sft

    t0 = time.perf_counter()
    if finished(cfg, force=force):
        out(f"[sft] skipped: finished model in {cfg.output_dir}")
        return {"skipped": True, "output_dir": cfg.output_dir, "wall_s": 0.0}
    out(f"[sft] fine-tuning {cfg.model} on {cfg.train_file} -> {cfg.output_dir}")
    res = train_sft(cfg, progress=progress, restart=force)
    wall = time.perf_counter() - t0
    out(f"[sft] done in {wall:.0f}s: {res.steps} steps, train loss {_f(res.train_loss)}, eval loss {_f(res.eval_loss)}"
        + _where(res.output_dir, "model"))
    return {"skipped": False, "output_dir": str(res.output_dir), "steps": res.steps, "train_loss": res.train_loss,
            "eval_loss": res.eval_loss, "wall_s": wall}


def run_rm(cfg, *, force: bool = False, progress: bool = True) -> dict:
    from tether.algos.rm import train_rm

    t0 = time.perf_counter()
    if finished(cfg, force=force):
        out(f"[rm] skipped: finished reward model in {cfg.output_dir}")
        return {"skipped": True, "output_dir": cfg.output_dir, "wall_s": 0.0}
    out(f"[rm] training reward model on {cfg.train_file} -> {cfg.output_dir}")
    res = train_rm(cfg, progress=progress, restart=force)
    wall = time.perf_counter() - t0
    groups = ", ".join(f"{k} {v:.3f}" for k, v in sorted(res.group_accuracy.items()))
    out(f"[rm] done in {wall:.0f}s: {res.steps} steps, eval accuracy {_f(res.accuracy)}"
        + (f" ({groups})" if groups else "") + _where(res.output_dir, "model"))
    return {"skipped": False, "output_dir": str(res.output_dir), "steps": res.steps, "accuracy": res.accuracy,
            "group_accuracy": res.group_accuracy, "eval_loss": res.eval_loss, "wall_s": wall}


def run_dpo(cfg, *, force: bool = False, progress: bool = True) -> dict:
    from tether.algos.dpo import train_dpo

    t0 = time.perf_counter()
    final = Path(cfg.output_dir) / "final"
    if finished(cfg, force=force):
        out(f"[dpo] skipped: finished policy in {final}")
        return {"skipped": True, "output_dir": str(final), "wall_s": 0.0}
    out(f"[dpo] {cfg.loss_type} preference optimisation of {cfg.model} on {cfg.train_file} -> {final}")
    res = train_dpo(cfg, progress=progress, restart=force)
    wall = time.perf_counter() - t0
    out(f"[dpo] done in {wall:.0f}s: {res.steps} steps, train loss {_f(res.train_loss)}, eval loss "
        f"{_f(res.eval_loss)}, eval reward accuracy {_f(res.eval_accuracy)}" + _where(cfg.output_dir, "final", "best"))
    return {"skipped": False, "output_dir": str(res.output_dir), "steps": res.steps, "train_loss": res.train_loss,
            "eval_loss": res.eval_loss, "eval_accuracy": res.eval_accuracy, "wall_s": wall}


def run_ppo(cfg, *, force: bool = False) -> dict:
    from tether.algos.ppo_trainer import PPOTrainer

    t0 = time.perf_counter()
    final = Path(cfg.output_dir) / "final"
    if finished(cfg, force=force):
        out(f"[ppo] skipped: finished policy in {final}")
        return {"skipped": True, "output_dir": str(final), "wall_s": 0.0}
    out(f"[ppo] {cfg.num_updates} updates of {cfg.policy} -> {final}")
    trainer = PPOTrainer(cfg, restart=force)
    history = trainer.train()
    wall = time.perf_counter() - t0
    last = history[-1] if history else {}
    out(f"[ppo] done in {wall:.0f}s: last score {_f(last.get('objective/score'))}, "
        f"kl {_f(last.get('objective/kl'))}" + _where(cfg.output_dir, "final", "best"))
    return {"skipped": False, "output_dir": str(final), "updates": len(history), "wall_s": wall,
            "last": {k: last[k] for k in ("objective/score", "objective/kl") if k in last}}


def run_pipeline(cfg) -> dict:
    """Run the stages of a ``PipelineConfig`` (or ``DemoConfig``): SFT, RM, PPO, or with ``method: dpo`` SFT, DPO;
    returns per-stage summaries."""
    show = sys.stderr.isatty()
    force = bool(getattr(cfg, "force", False))
    out: dict[str, Any] = {}
    out["sft"] = run_sft(cfg.sft, force=force, progress=show)
    if getattr(cfg, "method", "ppo") == "dpo":
        out["dpo"] = run_dpo(cfg.dpo, force=force or not out["sft"]["skipped"], progress=show)
        return out
    out["rm"] = run_rm(cfg.rm, force=force, progress=show)
    upstream_ran = not (out["sft"]["skipped"] and out["rm"]["skipped"])
    out["ppo"] = run_ppo(cfg.ppo, force=force or upstream_ran)
    return out


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"
