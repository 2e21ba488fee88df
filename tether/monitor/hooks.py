"""The narrow surface between the trainers and the monitor: build a :class:`RunLogger` for a PPO trainer (with its
held-out evaluator), and run the fast pre-flight checks on what the trainer loaded.

Only attributes every ``PPOTrainer`` has are read: ``cfg`` (a ``PPOConfig``, whose ``monitor`` section is used when
present), ``output_dir``, ``policy``, ``tokenizer``, ``ref``, ``rewards`` and ``prompts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from tether.config.monitor import MonitorConfig
from tether.monitor.logger import RunLogger


def monitor_config(cfg: Any) -> MonitorConfig:
    """The ``monitor`` section of a stage config, or the defaults when the config has none."""
    section = getattr(cfg, "monitor", None)
    return section if isinstance(section, MonitorConfig) else MonitorConfig()


def ppo_monitor(trainer: Any, config: Optional[MonitorConfig] = None, *, judges: Optional[Sequence[Any]] = None,
                quiet: bool = False) -> RunLogger:
    """A :class:`RunLogger` for ``trainer``'s output directory, with a :class:`HeldOutEvaluator` on
    ``monitor.eval_prompts`` (training reward, the judges, KL to the trainer's reference) when
    ``monitor.eval_every`` > 0. ``judges``: callables or names replacing ``monitor.judges`` (Python API).
    One-line ``ConfigError`` when evaluation is asked without a prompt file."""
    from tether.errors import ConfigError

    cfg = trainer.cfg
    mon = config or monitor_config(cfg)
    evaluator = None
    if mon.eval_every > 0:
        if not mon.eval_prompts:
            raise ConfigError("monitor.eval_prompts: required when monitor.eval_every > 0 (a held-out prompt file)")
        from tether.data.readers import load_prompts
        from tether.monitor.evaluate import HeldOutEvaluator

        prompts = load_prompts(mon.eval_prompts, trainer.tokenizer)[: mon.eval_num_prompts]
        evaluator = HeldOutEvaluator(
            prompts, trainer.tokenizer, rewards=trainer.rewards, judges=mon.judges if judges is None else judges,
            reference=trainer.ref,
            response_length=cfg.response_length, temperature=cfg.temperature, greedy=mon.eval_greedy,
            max_prompt_length=cfg.max_prompt_length, micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
        )
    if judges is not None and mon.best_metric is None:
        from tether.monitor.evaluate import default_best_metric

        mon = mon.model_copy(update={"best_metric": default_best_metric(list(judges))})
    return RunLogger(trainer.output_dir, mon, run_config=cfg, stage="ppo",
                     critic_warmup_updates=cfg.critic_warmup_updates, step_key="update", quiet=quiet,
                     evaluator=evaluator, num_updates=cfg.num_updates, autocast=getattr(cfg, "autocast", "none"))


def preflight(trainer: Any, *, fast: bool = True) -> list:
    """Run the fast ``tether doctor`` checks on the trainer's loaded policy, tokenizer, rewards and prompts.

    Returns the results when none failed; raises a one-line ``ConfigError`` naming each failed check and its fix
    otherwise (``monitor.preflight: false`` skips the checks)."""
    from tether.doctor import run_checks
    from tether.errors import ConfigError

    cfg = trainer.cfg
    prompts = cfg.prompts if isinstance(cfg.prompts, str) else list(trainer.prompts[:8])
    results = run_checks(cfg, policy=trainer.policy, tokenizer=trainer.tokenizer, reward=trainer.rewards,
                         prompts=prompts, fast=fast)
    failed = [r for r in results if r.status == "fail"]
    if failed:
        why = "; ".join(f"{r.name}: {r.detail} — fix: {r.fix}" for r in failed)
        raise ConfigError(f"pre-flight check failed ({why}); run `tether doctor` for the table, or set "
                          "monitor.preflight=false to skip")
    return results
