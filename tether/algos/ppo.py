"""PPO for causal LMs, and the critic-free estimators on the same loop.

One update reads as the data flow: 1. rollout → 2. score → 3. rewards → 4. advantages → 5. update → 6. report.
The math lives in ``tether.ops``; this file only composes it. ``train()`` adds the run around the updates:
checkpoints, resume, pre-emption and the NaN/Inf stop (``tether.algos.run_dir``, docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tether import ops
from tether.algos.batching import BatchPlan, derive_seed, prompt_indices
from tether.algos.common import MetricsWriter, set_seed, step_scheduler
from tether.algos.preemption import StopRequest
from tether.algos.run_dir import read_jsonl, stage_run_dir
from tether.checkpoint import kill_point, rng_state, set_rng_state, step_of
from tether.config.base import dump
from tether.config.ppo import PPOConfig
from tether.errors import CheckpointError, ConfigError, Preempted, TrainingError
from tether.models.forward import causal_lm_logits, causal_lm_logits_and_hidden, check_shared_trunk
from tether.models.load import (
    disable_dropout,
    ensure_pad_token,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resize_for_tokenizer,
    vocab_check,
)
from tether.models.value import ValueModel
from tether.monitor.logger import RunLogger
from tether.records import Experience
from tether.rewards.base import combine_scores, resolve_reward_sources
from tether.rewards.reward_model import RewardModelScorer
from tether.rollout.generate import encode_prompts, generate
from tether.rollout.score import critic_values, reference_logprobs, rollout_values

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
        self.output_dir = Path(cfg.output_dir)
        self.run = stage_run_dir(cfg, restart=restart)
        set_seed(derive_seed(cfg.seed, "init", 0))  # torch, and Python/NumPy for rewards that draw from them
        self.policy, self.tokenizer = self._load_policy(policy if policy is not None else cfg.policy, tokenizer)
        self.ref = self._load_reference(reference)
        self.rewards = resolve_reward_sources(
            reward, cfg.rewards, self.tokenizer, DTYPES[cfg.dtype], cfg.trust_remote_code
        )
        self.critic = self._load_critic(critic) if cfg.uses_critic else None
        self.prompts = self._load_prompts(prompts if prompts is not None else cfg.prompts)
        self.plan = BatchPlan.from_config(cfg)
        self.kl_ctl = (
            ops.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.kl_controller == "adaptive"
            else ops.FixedKLController(cfg.kl_coef)
        )
        self.optimizers, self.schedulers = self._build_optimizers()
        self.update = 0
        self.history: list[dict] = []
        self.skip_streak = 0
        """Updates in a row in which no optimizer step could be taken (non-finite reward, loss or gradient)."""
        self._skip_reason = ""
        self._grad_norms: dict[str, float] = {}
        self._checkpoint_path: Optional[Path] = None
        self._resume()
        # 0. watch: pre-flight checks (tether doctor's fast subset), then logs, held-out evaluation, alarms
        from tether.monitor.hooks import ppo_monitor, preflight

        self.monitor: Optional[RunLogger] = None
        if not self.run.finished:
            if cfg.monitor.preflight:
                preflight(self)
            self.monitor = ppo_monitor(self)
            self.monitor.resume(self.history)

    # ---------------------------------------------------------------- set-up
    def _load_policy(self, policy: Any, tokenizer: Any):
        if policy is None:
            raise ConfigError("policy: required (a model directory or a loaded causal LM)")
        if isinstance(policy, (str, Path)):
            tokenizer = tokenizer or load_tokenizer(policy, self.cfg.trust_remote_code)
            policy = load_causal_lm(policy, trust_remote_code=self.cfg.trust_remote_code)
        elif tokenizer is None:
            raise ConfigError("tokenizer: required when the policy is passed as a model object")
        ensure_pad_token(tokenizer, self.cfg.pad_policy)
        resize_for_tokenizer(policy, tokenizer)
        vocab_check(policy, tokenizer, "policy")
        disable_dropout(policy)
        tokenizer.padding_side = "left"
        return policy, tokenizer

    def _load_reference(self, reference: Optional[nn.Module]) -> nn.Module:
        if reference is None and self.cfg.reference:
            reference = load_causal_lm(self.cfg.reference, trust_remote_code=self.cfg.trust_remote_code)
        if reference is None:
            reference = copy.deepcopy(self.policy)
        resize_for_tokenizer(reference, self.tokenizer)
        vocab_check(reference, self.tokenizer, "reference")
        reference = disable_dropout(reference).eval().requires_grad_(False)
        if self.cfg.dtype != "float32":
            reference = reference.to(DTYPES[self.cfg.dtype])
        return reference

    def _load_critic(self, critic: Optional[nn.Module]) -> nn.Module:
        if critic is not None:
            return critic
        if self.cfg.critic_mode == "shared":  # a fresh value head on the policy's own trunk (no copy)
            vocab = self.policy.get_input_embeddings().num_embeddings
            try:
                check_shared_trunk(self.policy, torch.arange(min(8, vocab)).unsqueeze(0))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            return ValueModel.from_pretrained_model(self.policy).requires_grad_(True)
        source: nn.Module
        if self.cfg.critic:
            cfg_json = Path(self.cfg.critic) / "config.json"
            archs = json.loads(cfg_json.read_text()).get("architectures") or [] if cfg_json.is_file() else []
            loader = load_sequence_classifier if any("SequenceClassification" in a for a in archs) else load_causal_lm
            source = loader(self.cfg.critic, trust_remote_code=self.cfg.trust_remote_code)
        else:
            rm = next(
                (s.fn for s in self.rewards if isinstance(s.fn, RewardModelScorer) and s.fn.shares_tokenizer
                 and isinstance(getattr(s.fn.model, "score", None), nn.Linear)),
                None,
            )
            source = copy.deepcopy(rm.model) if rm is not None else copy.deepcopy(self.policy)
        resize_for_tokenizer(source, self.tokenizer)
        value = ValueModel.from_pretrained_model(source)
        if self.cfg.dtype != "float32" or next(value.parameters()).dtype == torch.bfloat16:
            value = value.float()  # the critic trains in float32 (or float64 when handed a float64 model)
        return value.requires_grad_(True)

    def _load_prompts(self, prompts: Any) -> list[str]:
        """The prompt texts, checked for length by the prompt rule; errors name the prompt's file line."""
        from tether.data.prompts import check_prompt_lengths, load_prompt_set

        if prompts is None:
            raise ConfigError("prompts: required (a list of strings, a prompt file, or a datasets.Dataset)")
        found = load_prompt_set(prompts, self.tokenizer)
        if not found.texts:
            raise ConfigError("prompts: the prompt set is empty")
        for where, p in zip(found.where, found.texts):
            if not p.strip():
                raise ConfigError(f"{where}: the prompt is empty")
        check_prompt_lengths(self.tokenizer, found, self.cfg.max_prompt_length, self.cfg.prompt_truncation)
        return found.texts

    def _build_optimizers(self):
        from tether.algos.common import build_optimizer, build_scheduler

        cfg = self.cfg
        opts, scheds = {}, {}
        models = {"policy": (self.policy, cfg.lr)}
        if self.critic is not None:
            models["critic"] = (self._critic_own, cfg.critic_lr)
        for name, (model, lr) in models.items():
            params = [p for p in model.parameters() if p.requires_grad]
            opts[name] = build_optimizer(params, lr, cfg.weight_decay, eps=cfg.adam_eps)
            # the policy's schedule runs over the updates that train it (not the critic warm-up)
            total = cfg.num_updates - (cfg.critic_warmup_updates if name == "policy" else 0)
            scheds[name] = build_scheduler(opts[name], cfg.lr_schedule, cfg.warmup_updates, total)
        return opts, scheds

    # ---------------------------------------------------------------- one update
    def step(self) -> dict[str, float]:
        """Run one PPO update (rollout, scoring, epochs of minibatch updates) and return its metrics."""
        cfg, plan, u = self.cfg, self.plan, self.update
        if u >= cfg.num_updates:
            raise ConfigError(f"{self.output_dir}: all num_updates={cfg.num_updates} updates are done; raise "
                              "num_updates to train further")
        t0 = time.perf_counter()
        # 1. rollout: sample completions from the tempered policy; old log-probs from the training forward
        idx = prompt_indices(u, cfg.rollout_batch_size, len(self.prompts), cfg.seed)
        texts = [self.prompts[i] for i in idx for _ in range(cfg.samples_per_prompt)]
        batch = encode_prompts(self.tokenizer, texts, texts, cfg.max_prompt_length, cfg.prompt_truncation)
        torch.manual_seed(derive_seed(cfg.seed, "rollout", u))
        with self._autocast():
            rollout, gen_logprobs = generate(
                self.policy, self.tokenizer, batch, response_length=cfg.response_length, temperature=cfg.temperature,
                stop_at_eos=cfg.stop_at_eos, micro_batch_size=cfg.micro_batch_size,
            )
        mask = rollout.response_mask
        t_gen = time.perf_counter()
        # 2. score: reference log-probs, rewards, critic values (no grad)
        with self._autocast():
            ref_logprobs = reference_logprobs(self.ref, rollout, cfg.temperature, cfg.micro_batch_size)
        scores, parts = combine_scores(self.rewards, rollout.prompts, rollout.completions, rollout, nonfinite="keep")
        skip = self._nonfinite_scores(scores, parts)  # NaN/Inf guard: nothing can be learned from this rollout
        if skip is not None:
            print(f"tether: update {u + 1}: {skip}; update skipped (no optimizer step)", file=sys.stderr, flush=True)
            scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        if cfg.missing_eos_penalty is not None:
            scores = ops.apply_missing_eos_penalty(scores, rollout.has_eos, cfg.missing_eos_penalty,
                                                   cfg.missing_eos_mode)
        if cfg.score_clip is not None:
            scores = ops.clip_scores(scores, cfg.score_clip)
        crit_mask = ops.critic_mask(mask, cfg.score_placement)
        with self._autocast():
            values = rollout_values(self.critic, rollout, crit_mask, cfg.micro_batch_size) if self.critic else None
        # 3. rewards: −β·KL at every token (KL-in-reward) and the score at one index
        kl = torch.where(mask, ops.kl_penalty(rollout.logprobs, ref_logprobs, cfg.kl_estimator,
                                              cfg.kl_log_ratio_clamp), 0.0)
        beta = self.kl_ctl.value
        rewards = ops.shape_rewards(scores, kl, mask, beta if cfg.kl_in == "reward" else 0.0, cfg.score_placement)
        if cfg.whiten_rewards:
            rewards = ops.whiten_rewards(rewards, crit_mask)
        # 4. advantages: GAE with the critic, or a critic-free baseline
        advantages, returns = ops.ADVANTAGE_ESTIMATORS[cfg.advantage](
            rewards, values, crit_mask, scores, gamma=cfg.gamma, lam=cfg.lam,
            group_size=cfg.samples_per_prompt, eps=cfg.grpo_std_eps,
        )
        if cfg.uses_critic and cfg.whiten_advantages:  # over the tokens the policy loss reads (N+: ~padding_mask)
            advantages = ops.masked_whiten(advantages, mask)
        exp = Experience(rollout.query_response, rollout.attention_mask, mask, crit_mask, rollout.logprobs,
                         ref_logprobs, values, rewards, advantages, returns)
        t_update = time.perf_counter()
        # 5. update: epochs × minibatches × micro-batches, one optimizer step per minibatch
        train_stats = self._update(exp, rollout.query_length) if skip is None else self._skipped_update()
        if train_stats["train/optimizer_steps"] == 0 and train_stats["train/skipped_steps"] > 0:
            self.skip_streak += 1
            self._skip_reason = skip or self._skip_reason
        else:
            self.skip_streak = 0
        # 6. report, then move β and the learning rates (the policy's only once it trains: critic warm-up spends
        # neither its schedule nor an adaptive β)
        policy_trains = u >= cfg.critic_warmup_updates
        lrs = {k: o.param_groups[0]["lr"] for k, o in self.optimizers.items()}  # the rates this update used
        seq_kl = ops.sequence_sum(ops.kl_penalty(rollout.logprobs, ref_logprobs, "k1"), mask)
        if policy_trains:
            self.kl_ctl.update(float(seq_kl.mean()), plan.sequences)
        for k, sched in self.schedulers.items():
            if k != "policy" or policy_trains:
                step_scheduler(sched)
        t_end = time.perf_counter()
        n_tokens = int(mask.sum())
        metrics: dict[str, float] = {
            "update": u + 1,
            "objective/score": float(scores.mean()),
            **{f"objective/score/{k}": float(v.mean()) for k, v in parts.items()},
            "objective/kl": float(seq_kl.mean()),
            "objective/kl_coef": beta,
            "objective/kl_penalty": float(ops.sequence_sum(kl, mask).mean()),
            "objective/rlhf_reward": float((scores - beta * seq_kl).mean()),
            "objective/entropy": float(ops.sequence_sum(-rollout.logprobs, mask).mean()),
            "response/length_mean": float(mask.sum(1).float().mean()),
            "response/eos_fraction": float(rollout.has_eos.float().mean()),
            "rollout/logprob_mismatch_max": float((gen_logprobs - rollout.logprobs).abs().masked_fill(~mask, 0).max()),
            "time/rollout_s": t_gen - t0,
            "time/score_s": t_update - t_gen,
            "time/update_s": t_end - t_update,
            "perf/tokens_per_s": n_tokens / max(t_end - t0, 1e-9),
            "lr/policy": lrs["policy"] if policy_trains else 0.0,
            **({"lr/critic": lrs["critic"]} if "critic" in lrs else {}),
            **train_stats,
        }
        metrics["train/skipped_update"] = float(skip is not None)
        if skip is not None:  # the zeros that stood in for NaN/Inf are not the rollout's score
            metrics["objective/score"] = metrics["objective/rlhf_reward"] = float("nan")
        if values is not None:
            metrics["value/explained_variance"] = float(ops.explained_variance(values, returns, crit_mask))
            metrics["value/mean"] = float(ops.masked_mean(values, crit_mask))
        self.update += 1
        samples = self._samples(rollout, scores, parts)
        watched = self.monitor.on_update(metrics, samples=samples, completions=rollout.completions,
                                         policy=self.policy)
        metrics.update(watched.metrics)  # text/* degeneration statistics, eval/* held-out scores
        self._log(metrics, samples)
        if watched.best:
            self.save(self.output_dir / "best")
        if self.skip_streak >= cfg.max_consecutive_skips:
            raise TrainingError(self._stop_message())
        return metrics

    def _update(self, exp: Experience, q: int) -> dict[str, float]:
        cfg, plan = self.cfg, self.plan
        train_policy = self.update >= cfg.critic_warmup_updates
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "minibatch", self.update))
        sums: dict[str, float] = {}
        grad_norms: dict[str, list[float]] = {}  # pre-clip norm of each model, per optimizer step
        weights: dict[str, float] = {}
        maxima = {"policy/ratio_max": -float("inf")}
        first = {"policy/first_minibatch_ratio_dev": 0.0, "policy/first_minibatch_clipfrac": 0.0}
        steps = skipped = 0
        stop = False
        for epoch in range(cfg.num_ppo_epochs):
            for mb_number, mb_idx in enumerate(plan.minibatches(g)):
                is_first = epoch == 0 and mb_number == 0
                mb = exp.select(mb_idx)
                counts = dict(num_tokens=float(mb.response_mask.sum()), num_seqs=float(len(mb_idx)),
                              max_len=float(mb.response_mask.shape[1]))
                vcounts = dict(counts, num_tokens=float(mb.critic_mask.sum()))
                for opt in self.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                mb_kl = 0.0
                finite = True
                for micro_idx in plan.micro_batches(torch.arange(len(mb_idx))):
                    x = mb.select(micro_idx)
                    with self._autocast():  # the model forwards; the log-prob and loss math below stay float32
                        if self._shared:  # one trunk pass gives logits and the hidden state the value head reads
                            logits, hidden = causal_lm_logits_and_hidden(self.policy, x.query_response,
                                                                         x.attention_mask)
                            logits = logits[:, q - 1 : -1]
                            new_values = self.critic.values_from_hidden(hidden)[:, q - 1 : -1]
                        else:
                            logits = causal_lm_logits(self.policy, x.query_response, x.attention_mask)[:, q - 1 : -1]
                            if self.critic is not None:
                                new_values = critic_values(self.critic, x.query_response, x.attention_mask, q)
                    new_logprobs = ops.logprobs_from_logits(logits, x.query_response[:, q:], cfg.temperature)
                    pg_loss, pg = ops.clipped_policy_loss(
                        new_logprobs, x.logprobs, x.advantages, x.response_mask, clip_low=cfg.clip_eps,
                        clip_high=cfg.clip_eps_high, dual_clip=cfg.dual_clip, mode=cfg.loss_aggregation, **counts,
                    )
                    loss = pg_loss if train_policy else pg_loss * 0.0
                    share = float(x.response_mask.sum()) / counts["num_tokens"]
                    stats = {"policy/loss": float(pg_loss.detach()) / share if share else 0.0,
                             "policy/clipfrac": float(pg["clipfrac"]), "policy/approx_kl": float(pg["approx_kl"]),
                             "policy/ratio_mean": float(pg["ratio_mean"])}
                    if cfg.entropy_coef > 0:
                        ent = ops.entropy_from_logits(logits, cfg.temperature)
                        loss = loss + cfg.entropy_coef * ops.entropy_loss(ent, x.response_mask,
                                                                          mode=cfg.loss_aggregation, **counts)
                        stats["policy/entropy"] = float(ops.masked_mean(ent.detach(), x.response_mask))
                    if cfg.kl_in == "loss" and self.kl_ctl.value > 0:
                        kl_loss = ops.kl_loss(
                            new_logprobs, x.ref_logprobs, x.response_mask, estimator=cfg.kl_estimator,
                            log_ratio_clamp=cfg.kl_log_ratio_clamp or 10.0, mode=cfg.loss_aggregation, **counts)
                        loss = loss + self.kl_ctl.value * kl_loss
                        stats["policy/kl_loss"] = float(kl_loss.detach()) / share if share else 0.0
                    if self.critic is not None:
                        vf_loss, vf = ops.clipped_value_loss(new_values, x.values, x.returns, x.critic_mask,
                                                             clip=cfg.value_clip, mode="token_mean", **vcounts)
                        loss = loss + cfg.vf_coef * vf_loss
                        vshare = float(x.critic_mask.sum()) / vcounts["num_tokens"]
                        stats.update({"value/loss": float(vf_loss.detach()) / vshare,
                                      "value/clipfrac": float(vf["clipfrac"])})
                    if not bool(torch.isfinite(loss.detach())):  # NaN/Inf guard: no backward, the step is skipped
                        finite = False
                        break
                    loss.backward()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v * share
                        weights[k] = weights.get(k, 0.0) + share
                    maxima["policy/ratio_max"] = max(maxima["policy/ratio_max"], float(pg["ratio_max"]))
                    mb_kl += float(pg["approx_kl"]) * share
                    if is_first:  # ppo_details.md O1: ratio exactly 1 through every micro-batch of it
                        dev = float(torch.maximum((pg["ratio_max"] - 1).abs(), (pg["ratio_min"] - 1).abs()))
                        first["policy/first_minibatch_ratio_dev"] = max(first["policy/first_minibatch_ratio_dev"], dev)
                        first["policy/first_minibatch_clipfrac"] = max(first["policy/first_minibatch_clipfrac"],
                                                                       float(pg["clipfrac"]))
                ok = self._optimizer_step(train_policy, finite_loss=finite)
                steps += ok
                skipped += not ok
                for k, norm in (self._grad_norms.items() if ok else ()):
                    grad_norms.setdefault(k, []).append(norm)
                if cfg.target_kl is not None and mb_kl > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {k: sums[k] / weights[k] for k in sums if weights[k]}
        out.update(maxima)
        out.update(first)
        out.update({f"{'value' if k == 'critic' else k}/grad_norm": sum(v) / len(v) for k, v in grad_norms.items()})
        out["train/optimizer_steps"] = steps
        out["train/skipped_steps"] = skipped
        out["train/epochs_done"] = epoch + 1
        return out

    def _skipped_update(self) -> dict[str, float]:
        """Train statistics of an update whose rollout could not be learned from (no optimizer step)."""
        planned = self.cfg.num_ppo_epochs * self.cfg.num_minibatches
        return {"train/optimizer_steps": 0, "train/skipped_steps": planned, "train/epochs_done": 0}

    def _nonfinite_scores(self, scores: torch.Tensor, parts: dict[str, torch.Tensor]) -> Optional[str]:
        """None when every score is finite; else which source returned what for which completion."""
        if bool(torch.isfinite(scores).all()):
            return None
        for name, raw in parts.items():
            bad = ~torch.isfinite(raw)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                return (f"reward {name!r} returned a non-finite value ({float(raw[i])}) for completion {i} "
                        f"({int(bad.sum())} of {len(raw)})")
        return "the weighted sum of the rewards is not finite"

    def _optimizer_step(self, train_policy: bool, finite_loss: bool = True) -> bool:
        """Clip and apply the accumulated gradients; skip the step when the loss or any gradient is not finite."""
        if not finite_loss:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            self._skip_reason = "non-finite loss"
            print(f"tether: update {self.update + 1}: non-finite loss, optimizer step skipped", file=sys.stderr)
            return False
        named = {"policy": self.policy, "critic": self._critic_own}
        params = {k: [p for p in m.parameters() if p.grad is not None] for k, m in named.items() if m is not None}
        # one norm per model: the clip and the finiteness check in one pass (a NaN/Inf anywhere makes it non-finite)
        max_norm = self.cfg.max_grad_norm or float("inf")
        self._grad_norms = {k: float(torch.nn.utils.clip_grad_norm_(ps, max_norm)) for k, ps in params.items() if ps}
        for k, norm in self._grad_norms.items():
            if not math.isfinite(norm):
                for opt in self.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                print(f"tether: update {self.update + 1}: non-finite {k} gradient, optimizer step skipped",
                      file=sys.stderr)
                self._skip_reason = f"non-finite {k} gradient"
                return False
        for k in params:
            if k == "policy" and not train_policy:
                continue
            self.optimizers[k].step()
        return True

    # ---------------------------------------------------------------- loop, logs, outputs
    def train(self) -> list[dict[str, float]]:
        """Run the remaining updates up to ``num_updates`` with checkpoints every ``checkpoint_every`` and at the end,
        then save the final model. Returns the metrics of every update (also those before a resume).

        SIGTERM/Ctrl-C: the current update finishes, a checkpoint is written and ``Preempted`` is raised; a second
        signal aborts with ``KeyboardInterrupt``. ``max_consecutive_skips`` updates in a row without an optimizer step
        (NaN/Inf) raise ``TrainingError``, leaving the last checkpoint as it was. A finished run returns at once.
        """
        from tether.monitor.progress import progress

        cfg = self.cfg
        if self.run.finished:
            print(f"tether: {self.output_dir / 'final'} holds the finished run ({cfg.num_updates} updates); "
                  "nothing to do", file=sys.stderr, flush=True)
            return self.history
        bar = progress(total=cfg.num_updates, desc="ppo", enabled=cfg.progress, unit="update")
        bar.update(self.update)
        try:
            self._train_loop(bar)
        except BaseException:
            self.monitor.close(report=False)
            raise
        self.monitor.close()  # writes report.html
        return self.history

    def _train_loop(self, bar) -> None:
        cfg = self.cfg
        with StopRequest() as stop:
            while self.update < cfg.num_updates:
                self.step()
                bar.update(1)
                bar.set_postfix(**self.monitor.postfix())
                kill_point(f"after-update:{self.update}")
                due = cfg.checkpoint_every and self.update % cfg.checkpoint_every == 0
                if self.update < cfg.num_updates and (due or stop.requested):
                    path = self.save_checkpoint()
                    if stop.requested:
                        bar.close()
                        raise Preempted(f"pre-empted ({stop.requested}) after update {self.update} of "
                                        f"{cfg.num_updates}; checkpoint {path} written. Run the same command again "
                                        "to resume")
            bar.close()
            if self._checkpoint_path is None or self._checkpoint_step != self.update:
                self.save_checkpoint()
            self.save(self.output_dir / "final")

    @property
    def _checkpoint_step(self) -> Optional[int]:
        return step_of(self._checkpoint_path) if self._checkpoint_path is not None else None

    def _stop_message(self) -> str:
        last = self._checkpoint_path or "none (the run will start over)"
        n = self.skip_streak
        return (f"update {self.update}: {n} update{'s' if n > 1 else ''} in a row without an optimizer step "
                f"(last cause: {self._skip_reason}); stopped. Last good checkpoint: {last}")

    def _autocast(self):
        """``torch.autocast`` in ``cfg.autocast`` around model forwards, or nothing (``autocast: none``)."""
        if self.cfg.autocast == "none":
            return contextlib.nullcontext()
        device = next(self.policy.parameters()).device
        return torch.autocast(device.type, dtype=torch.bfloat16)

    @property
    def _shared(self) -> bool:
        """The critic is a value head on the policy's trunk (``critic_mode=shared``)."""
        return self.critic is not None and self.cfg.critic_mode == "shared"

    @property
    def _critic_own(self) -> Optional[nn.Module]:
        """The critic's own parameters: the whole critic, or only its head when it shares the policy's trunk."""
        return self.critic.head if self._shared else self.critic

    def _models(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, **({"critic": self._critic_own} if self.critic is not None else {})}

    def save_checkpoint(self) -> Path:
        """Checkpoint the run as it stands: weights, optimizer/scheduler/KL-controller/RNG state, logs, config."""
        state = {
            "update": self.update,
            "skip_streak": self.skip_streak,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "kl_ctl": self.kl_ctl.state_dict(),
            "rng": rng_state(),
        }
        found = self.run.save(self.update, self._models(), state, total=self.cfg.num_updates,
                              keep=self.cfg.keep_checkpoints)
        self._checkpoint_path = found.path
        return found.path

    def _resume(self) -> None:
        """Continue from the checkpoint the run directory chose (weights, optimizers, β, RNG, logs), or start fresh.
        On a finished run the trainer holds its final checkpoint's state (when readable); ``train()`` does nothing."""
        if self.run.finished:
            self.update = self.cfg.num_updates
            self.history = read_jsonl(self.output_dir / "metrics.jsonl")
            try:
                found = self.run.checkpoint
            except CheckpointError:
                found = None
            if found is None or found.step != self.cfg.num_updates:
                return
        else:
            found = self.run.begin()
            if found is None:
                return
            self.run.check_total(self.cfg.num_updates)
        state = self.run.restore(self._models())
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        set_rng_state(state["rng"])
        self.update = int(state["update"])
        self.skip_streak = int(state["skip_streak"])
        self.history = read_jsonl(self.output_dir / "metrics.jsonl")
        self._checkpoint_path = found.path

    def _samples(self, rollout, scores, parts) -> Optional[list[dict]]:
        """The sample-table rows of this update (every ``sample_every`` updates and the first), else None."""
        every, n = self.cfg.sample_every, self.cfg.num_samples_logged
        if not (every and n and (self.update % every == 0 or self.update == 1)):
            return None
        return [{"update": self.update, "prompt": rollout.prompts[i], "completion": rollout.completions[i],
                 "score": float(scores[i]), **{k: float(v[i]) for k, v in parts.items()}}
                for i in range(min(n, len(rollout.prompts)))]

    def _log(self, metrics: dict, samples: Optional[list[dict]]) -> None:
        self.history.append(metrics)
        MetricsWriter(self.output_dir / "metrics.jsonl", overwrite=False).write(metrics)
        if samples:
            writer = MetricsWriter(self.output_dir / "samples.jsonl", overwrite=False)
            for row in samples:
                writer.write(row)

    def save(self, out_dir: str | Path) -> Path:
        """Policy (and critic under ``critic/``; only its head with ``critic_mode=shared``) in ``save_pretrained``
        format with the tokenizer and resolved config, swapped in whole (``save_model_atomic``); non-finite weights
        are refused."""
        from tether.algos.common import save_model_atomic
        from tether.checkpoint import check_finite
        from tether.models.card import model_card

        check_finite(self._models())
        critic, trunk = self.critic, not self._shared
        out = Path(out_dir)
        save_model_atomic(self.policy, self.tokenizer, out, extra_files={"tether_config.yaml": dump(self.cfg),
                                                                         "README.md": model_card("ppo", self.cfg,
                                                                                                 self.history)},
                          before_swap=(lambda tmp: critic.save(tmp / "critic", trunk)) if critic is not None else None)
        return out
