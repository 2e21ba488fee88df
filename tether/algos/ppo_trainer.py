"""``PPOTrainer``: the PPO update (``tether.algos.ppo``) over the parts ``tether.algos.parts`` loads, inside the run
loop every stage shares (``tether.engine.loop``: checkpoints, resume, pre-emption, the NaN/Inf stop,
docs/reliability.md), watched by the monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tether import ops
from tether.engine.optim import derive_seed
from tether.algos.autobatch import auto_micro_batch
from tether.algos.parts import load_ppo_parts
from tether.algos.ppo import PPOState, ppo_update
from tether.config.base import dump
from tether.config.ppo import PPOConfig
from tether.console import note, progress
from tether.engine.checkpoint import check_finite
from tether.engine.dist import setup as setup_dist
from tether.engine.loop import NullMonitor, RunLoop
from tether.engine.optim import build_optimizer, build_scheduler, set_seed
from tether.engine.outputs import save_model_atomic
from tether.engine.run_dir import stage_run_dir
from tether.errors import ConfigError
from tether.eval.heldout import ppo_heldout
from tether.monitor.hooks import ppo_monitor, preflight
from tether.models.card import model_card
from tether.models.lora import AdapterSave, save_adapter
from tether.monitor.logger import RunLogger
from tether.monitor.trackers import check_stage_trackers


def place_parts(parts: Any, device: torch.device) -> None:
    """Move every model of a PPO run to ``device``, in place: the policy (with a shared critic's head and a LoRA
    adapter, which live on it), the reference, a separate critic and every reward model tether loaded. A reward
    source that is a plain Python function is not moved; its scores are moved to the device
    (``tether.rewards.base.combine_scores``)."""
    from tether.rewards.reward_model import RewardModelScorer

    for model in (parts.policy, parts.reference, parts.critic):
        if model is not None:
            model.to(device)
    for src in parts.rewards:
        if isinstance(src.fn, RewardModelScorer):
            src.fn.model.to(device)


class PPOTrainer:
    """Train ``policy`` against ``reward`` with PPO (or a critic-free estimator), tethered to a frozen reference.

    Arguments given here take precedence over the paths in ``config``: ``policy`` a directory or a loaded causal LM;
    ``reward`` a reward-model directory, a callable ``(prompts, completions) -> floats``, or a list of those or of
    ``(source, weight)`` pairs; ``prompts`` a list of strings, a file path or a ``datasets.Dataset``.

    A trainer built on an ``output_dir`` that holds checkpoints continues from the newest one (``config.resume``);
    ``restart=True`` discards an earlier run there instead (the pipeline's ``force``).
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        policy: Any = None,
        tokenizer: Any = None,
        reward: Any = None,
        prompts: Any = None,
        reference: Optional[nn.Module] = None,
        critic: Optional[nn.Module] = None,
        restart: bool = False,
    ):
        self.cfg = cfg = config
        check_stage_trackers(cfg)  # a tracker that is not installed: one line, before anything loads
        self.output_dir = Path(cfg.output_dir)
        self.dist = dist = setup_dist(cfg.device)  # under torchrun: the processes, each with its share of prompts
        if dist.distributed and any(r.normalize == "batch" for r in cfg.rewards):
            raise ConfigError("rewards: normalize=batch is not available on several processes yet; use one "
                              "process, or normalize=none")
        if dist.distributed and cfg.dynamic_sampling:
            raise ConfigError("dynamic_sampling: not available on several processes yet (the refill rounds would "
                              "differ per process); use one process, or dynamic_sampling=false")
        self.run = stage_run_dir(cfg, restart=restart, dist=dist)
        set_seed(derive_seed(cfg.seed, "init", 0))  # torch, and Python/NumPy for rewards that draw from them
        parts = load_ppo_parts(cfg, policy=policy, tokenizer=tokenizer, reward=reward, prompts=prompts,
                               reference=reference, critic=critic)
        place_parts(parts, dist.device)  # before the optimizers are built over the parameters
        micro = cfg.micro_batch_size
        if micro == "auto":
            micro, line = auto_micro_batch(cfg, parts.policy, parts.reference, parts.critic, parts.rewards)
            note(line)
        kl_ctl = (ops.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                  if cfg.kl_controller == "adaptive" else ops.FixedKLController(cfg.kl_coef))
        self.state = PPOState(cfg=cfg, policy=parts.policy, tokenizer=parts.tokenizer, reference=parts.reference,
                              critic=parts.critic, rewards=parts.rewards, prompts=parts.prompts, kl_ctl=kl_ctl,
                              optimizers={}, schedulers={}, adapter=parts.adapter,
                              critic_adapter=parts.critic_adapter, micro_batch=micro, dist=dist)
        self._build_optimizers()
        self.loop = RunLoop(self.run, total=cfg.num_updates, models=self.state.models(),
                            optimizers=self.state.optimizers, schedulers=self.state.schedulers,
                            stateful={"kl_ctl": kl_ctl,
                                      **({"prompt_cursor": self.state.cursor} if cfg.dynamic_sampling else {})},
                            checkpoint_every=cfg.checkpoint_every,
                            keep_checkpoints=cfg.keep_checkpoints, max_consecutive_skips=cfg.max_consecutive_skips,
                            skip_noun="update",
                            skip_phrase="without an optimizer step (last cause: {reason})", samples_log="samples.jsonl",
                            time_limit_s=cfg.time_limit_s, dist=dist)
        # 0. watch: pre-flight checks (tether doctor's fast subset), then logs, held-out evaluation, alarms
        self.monitor: Optional[RunLogger] = None
        if not self.run.finished:
            if cfg.monitor.preflight:
                preflight(self)
            if dist.is_main:  # one process logs, evaluates held-out prompts and saves best/; the others train
                self.monitor = ppo_monitor(self)
                heldout = ppo_heldout(cfg, self.policy, self.tokenizer, self.rewards, self.ref)
                self.loop.watch(self.monitor, heldout, save_best=lambda: self.save(self.output_dir / "best"))
            else:
                self.monitor = NullMonitor()
                self.loop.watch(self.monitor)

    # ---------------------------------------------------------------- the parts, as attributes
    policy = property(lambda self: self.state.policy)
    tokenizer = property(lambda self: self.state.tokenizer)
    ref = property(lambda self: self.state.reference)
    critic = property(lambda self: self.state.critic)
    rewards = property(lambda self: self.state.rewards)
    prompts = property(lambda self: self.state.prompts)
    kl_ctl = property(lambda self: self.state.kl_ctl)
    plan = property(lambda self: self.state.plan)
    optimizers = property(lambda self: self.state.optimizers)
    schedulers = property(lambda self: self.state.schedulers)

    @property
    def update(self) -> int:
        """Updates done."""
        return self.loop.step

    @property
    def history(self) -> list[dict]:
        """The metrics of every update (also those before a resume)."""
        return self.loop.history

    @property
    def skip_streak(self) -> int:
        """Updates in a row in which no optimizer step could be taken (non-finite reward, loss or gradient)."""
        return self.loop.skip_streak

    def _build_optimizers(self) -> None:
        cfg, st = self.cfg, self.state
        models = {"policy": (st.policy, cfg.lr)}
        if st.critic is not None:
            models["critic"] = (st.critic_own, cfg.critic_lr)
        for name, (model, lr) in models.items():
            params = [p for p in model.parameters() if p.requires_grad]
            st.optimizers[name] = build_optimizer(params, lr, cfg.weight_decay, eps=cfg.adam_eps)
            # the policy's schedule runs over the updates that train it (not the critic warm-up)
            total = cfg.num_updates - (cfg.critic_warmup_updates if name == "policy" else 0)
            st.schedulers[name] = build_scheduler(st.optimizers[name], cfg.lr_schedule, cfg.warmup_updates, total)

    # ---------------------------------------------------------------- one update, the run
    def step(self) -> dict[str, float]:
        """Run one PPO update (rollout, scoring, epochs of minibatch updates), log it and return its metrics."""
        cfg, u = self.cfg, self.loop.step
        if u >= cfg.num_updates:
            raise ConfigError(f"{self.output_dir}: all num_updates={cfg.num_updates} updates are done; raise "
                              "num_updates to train further")
        out = ppo_update(self.state, u)
        self.loop.advance(skipped=out.skipped, reason=out.reason)
        rollout = out.scored.rollout
        return self.loop.log(out.metrics, samples=self._samples(out), completions=rollout.completions)

    def _samples(self, out) -> Optional[list[dict]]:
        """The sample-table rows of this update (every ``sample_every`` updates and the first), else None."""
        every, n, u = self.cfg.sample_every, self.cfg.num_samples_logged, self.loop.step
        if not (every and n and (u % every == 0 or u == 1)):
            return None
        ro, scores, parts = out.scored.rollout, out.scored.scores, out.scored.parts
        return [{"update": u, "prompt": ro.prompts[i], "completion": ro.completions[i], "score": float(scores[i]),
                 **{k: float(v[i]) for k, v in parts.items()}} for i in range(min(n, len(ro.prompts)))]

    def train(self) -> list[dict[str, float]]:
        """Run the remaining updates up to ``num_updates`` (or until ``time_limit_s``) with checkpoints every ``checkpoint_every`` and at the end,
        then save the final model. Returns the metrics of every update (also those before a resume).

        SIGTERM/Ctrl-C: the current update finishes, a checkpoint is written and ``Preempted`` is raised; a second
        signal aborts with ``KeyboardInterrupt``. ``max_consecutive_skips`` updates in a row without an optimizer step
        (NaN/Inf) raise ``TrainingError``, leaving the last checkpoint as it was. A finished run returns at once.
        """
        cfg = self.cfg
        if self.run.finished:
            note(f"{self.output_dir / 'final'} holds the finished run ({len(self.history)} updates); nothing to do")
            return self.history
        bar = progress(total=cfg.num_updates, desc="ppo", enabled=cfg.progress and self.dist.is_main, unit="update",
                       every=getattr(getattr(self.monitor, "cfg", None), "log_every", None))
        self.loop.run(self.step, bar, postfix=getattr(self.monitor, "postfix", None))  # rank 0 only has a monitor
        if self.loop.step < cfg.num_updates and self.dist.is_main:
            note(f"time_limit_s={cfg.time_limit_s:g} reached after update {self.loop.step} of {cfg.num_updates}; "
                 f"saving {self.output_dir / 'final'}")
        try:
            if self.dist.is_main:
                self.save(self.output_dir / "final")
        except BaseException:
            self.monitor.close(report=False)
            raise
        self.monitor.close()  # writes report.html
        self.dist.barrier()  # the other processes return once final/ is there
        return self.history

    def save_checkpoint(self) -> Path:
        """Checkpoint the run as it stands: weights, optimizer/scheduler/KL-controller/RNG state, logs, config."""
        return self.loop.save()

    def save(self, out_dir: str | Path) -> Path:
        """Policy (and critic under ``critic/``; only its head with ``critic_mode=shared``) in ``save_pretrained``
        format with the tokenizer and resolved config, swapped in whole (``save_model_atomic``); non-finite weights
        are refused. With ``policy_lora`` the policy is its adapter (``tether.models.lora.save_adapter``; the merged
        model under ``merged/`` with ``merge_on_save``), with ``critic_lora`` the critic is its adapter and head."""
        check_finite(self.state.models())
        st = self.state
        critic, trunk = st.critic, not st.shared and st.critic_adapter is None
        out = Path(out_dir)
        files = {"tether_config.yaml": dump(self.cfg), "README.md": model_card("ppo", self.cfg, self.history)}

        def save_critic(tmp: Path) -> None:
            critic.save(tmp / "critic", trunk)
            if st.critic_adapter is not None:
                save_adapter(st.critic_adapter, tmp / "critic")

        model = self.policy if st.adapter is None else AdapterSave(
            st.adapter, self.tokenizer, merged=self.cfg.policy_lora.merge_on_save)
        save_model_atomic(model, self.tokenizer, out, extra_files=files,
                          before_swap=save_critic if critic is not None else None)
        return out
