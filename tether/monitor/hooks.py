"""The narrow surface between the PPO trainer and the monitor: build a :class:`RunLogger` for it, and run the fast
pre-flight checks on what it loaded.

Only attributes every ``PPOTrainer`` has are read: ``cfg`` (a ``PPOConfig``, whose ``monitor`` section is used when
present), ``output_dir``, ``policy``, ``tokenizer``, ``ref``, ``rewards`` and ``prompts``.
"""

from __future__ import annotations

from typing import Any, Optional

from tether.config.monitor import MonitorConfig
from tether.doctor import run_checks
from tether.errors import ConfigError
from tether.monitor.logger import RunLogger


def monitor_config(cfg: Any) -> MonitorConfig:
    """The ``monitor`` section of a stage config, or the defaults when the config has none."""
    section = getattr(cfg, "monitor", None)
    return section if isinstance(section, MonitorConfig) else MonitorConfig()


def ppo_monitor(trainer: Any, config: Optional[MonitorConfig] = None, *, quiet: bool = False) -> RunLogger:
    """A :class:`RunLogger` for ``trainer``'s output directory (logs, alarms, the report); the held-out evaluation
    is ``tether.eval.heldout.ppo_heldout``, which the run loop calls when due."""
    cfg = trainer.cfg
    mon = config or monitor_config(cfg)
    return RunLogger(trainer.output_dir, mon, run_config=cfg, stage="ppo",
                     critic_warmup_updates=cfg.critic_warmup_updates, step_key="update", quiet=quiet,
                     autocast=getattr(cfg, "autocast", "none"))


def preflight(trainer: Any, *, fast: bool = True) -> list:
    """Run the fast ``tether doctor`` checks on the trainer's loaded policy, tokenizer, rewards and prompts.

    Returns the results when none failed; raises a one-line ``ConfigError`` naming each failed check and its fix
    otherwise (``monitor.preflight: false`` skips the checks)."""
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
