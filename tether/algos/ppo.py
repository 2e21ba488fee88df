"""PPO for causal LMs, and the critic-free estimators on the same update, as plain functions over a small state.

One update reads as the data flow (docs/layout.md): 1. rollout → 2. score → 3. rewards → 4. advantages →
5. optimise (epochs × minibatches × micro-batches) → 6. report. The math lives in ``tether.ops``, model loading in
``tether.algos.parts``, the run around the updates (resume, checkpoints, the NaN/Inf stop) in ``tether.engine.loop``;
``PPOTrainer`` (``tether.algos.ppo_trainer``) puts them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tether import ops
from tether.algos.batching import BatchPlan, prompt_indices, prompt_stream
from tether.engine.optim import derive_seed
from tether.config.ppo import PPOConfig
from tether.console import note
from tether.engine.dist import Dist, current
from tether.engine.loop import StepStatus, guarded_step
from tether.engine.optim import step_scheduler
from tether.models.checkpointing import grad_forward
from tether.models.forward import causal_lm_logits, causal_lm_logits_and_hidden
from tether.plan.oom import retry_on_oom
from tether.records import Experience, Rollout
from tether.rewards.base import combine_scores
from tether.rollout.generate import encode_prompts, generate, response_logprobs
from tether.rollout.rows import concat_rollouts, select_rows
from tether.rollout.sampler import rollout_seeds
from tether.rollout.score import critic_values, reference_logprobs, rollout_values


@dataclass
class PPOState:
    """What an update reads and moves: the models, their optimizers and schedules, and β."""

    cfg: PPOConfig
    policy: nn.Module
    tokenizer: Any
    reference: nn.Module
    critic: Optional[nn.Module]
    rewards: list
    prompts: list[str]
    kl_ctl: Any
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    dist: Optional[Dist] = None
    """The processes (``tether.engine.dist``): each samples and trains on its share of the prompts; None: one."""
    adapter: Any = None
    """The policy's peft wrapper under ``policy_lora`` (saving, the adapter-off reference), else None."""
    critic_adapter: Any = None
    """The critic trunk's peft wrapper under ``critic_lora``, else None."""
    micro_batch: Optional[int] = None
    """The micro-batch size in use: ``cfg.micro_batch_size``, or the planner's choice with ``auto``; an
    out-of-memory retry lowers it (``plan.micro_batch_size`` follows)."""
    plan: BatchPlan = field(init=False)
    cursor: "PromptCursor" = field(default_factory=lambda: PromptCursor())
    """Prompts consumed so far (dynamic sampling only; checkpointed with the run)."""

    def __post_init__(self) -> None:
        if self.micro_batch is None:
            self.micro_batch = self.cfg.micro_batch_size
        self.plan = dataclasses.replace(BatchPlan.from_config(self.cfg), micro_batch_size=self.micro_batch)

    @property
    def shared(self) -> bool:
        """The critic is a value head on the policy's trunk (``critic_mode=shared``)."""
        return self.critic is not None and self.cfg.critic_mode == "shared"

    @property
    def critic_own(self) -> Optional[nn.Module]:
        """The critic's own parameters: the whole critic, or only its head when it shares the policy's trunk."""
        return self.critic.head if self.shared else self.critic

    def models(self) -> dict[str, nn.Module]:
        """The trained models by checkpoint name: ``policy`` and (with a critic) ``critic``."""
        return {"policy": self.policy, **({"critic": self.critic_own} if self.critic is not None else {})}

    def training_forward(self):
        """Train mode around the forwards that build a graph when ``gradient_checkpointing`` is on (checkpointing
        acts only in train mode; dropout is off, so the outputs are those of eval mode), else nothing."""
        stack = contextlib.ExitStack()
        if self.cfg.gradient_checkpointing:
            for model in (self.policy, self.critic):
                if model is not None:
                    stack.enter_context(grad_forward(model))
        return stack

    def autocast(self):
        """``torch.autocast`` in bfloat16 around model forwards (``autocast: bfloat16``), or nothing."""
        if self.cfg.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(next(self.policy.parameters()).device.type, dtype=torch.bfloat16)


@dataclass
class PromptCursor:
    """Positions of the seeded prompt order consumed so far. Dynamic sampling consumes a variable number of prompts
    per update, so the position is checkpointed with the run (``state_dict``); without it, update u starts at u·B."""

    position: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


@dataclass
class Scored:
    """Steps 1–4 of one update: the experience, and what the report reads besides it."""

    exp: Experience
    rollout: Rollout
    gen_logprobs: Tensor  # (B, R) log-probs the sampler saw (to compare with the training forward's)
    scores: Tensor  # (B,) sequence scores after penalties and clipping
    parts: dict[str, Tensor]  # source name → (B,) raw scores
    kl: Tensor  # (B, R) per-token KL estimate, 0 at pads
    skip: Optional[str]  # why nothing can be learned from this rollout (a non-finite score), else None
    seconds: tuple[float, float]  # (rollout, scoring) wall time
    extra: dict[str, float] = field(default_factory=dict)  # dynamic sampling's and the overlong penalty's metrics


@dataclass
class Round:
    """One round of sampling and scoring: the prompts, their rollout, and the scores after every penalty."""

    idx: list[int]  # prompt indices (G rows each)
    rollout: Rollout
    gen_logprobs: Tensor  # (B, R)
    scores: Tensor  # (B,)
    parts: dict[str, Tensor]
    skip: Optional[str]
    seconds: float  # sampling wall time

    def select(self, groups: Tensor, group_size: int) -> "Round":
        """The groups where ``groups`` (G,) bool is True."""
        rows = (groups.repeat_interleave(group_size)).nonzero().squeeze(1)
        return Round([i for i, k in zip(self.idx, groups.tolist()) if k], select_rows(self.rollout, rows),
                     self.gen_logprobs[rows], self.scores[rows], {k: v[rows] for k, v in self.parts.items()},
                     self.skip, self.seconds)


def sample_round(state: PPOState, u: int, idx: list[int], seen: dict[int, int]) -> Round:
    """Steps 1 and the scores of step 2 for the prompts ``idx`` of update ``u``: sample G completions of each, score
    them, apply the missing-EOS and overlong penalties and the clip. ``seen``: the occurrences of each prompt so far
    in this update (:func:`tether.rollout.sampler.rollout_seeds`)."""
    cfg, t0 = state.cfg, time.perf_counter()
    dist = current(state.dist)
    texts = [state.prompts[i] for i in idx for _ in range(cfg.samples_per_prompt)]
    batch = encode_prompts(state.tokenizer, texts, texts, cfg.max_prompt_length, cfg.prompt_truncation)
    # one generator per row, from (seed, update, prompt index, sample index): the draws never depend on the batch
    seeds = rollout_seeds(cfg.seed, u, idx, cfg.samples_per_prompt, seen)
    with state.autocast():
        rollout, gen_logprobs = generate(
            state.policy, state.tokenizer, batch, response_length=cfg.response_length, temperature=cfg.temperature,
            stop_at_eos=cfg.stop_at_eos, micro_batch_size=state.plan.micro_batch_size, seeds=seeds,
            value_head=state.critic.values_from_hidden if state.shared else None,
        )
    t_gen = time.perf_counter()
    scores, parts = combine_scores(state.rewards, rollout.prompts, rollout.completions, rollout, nonfinite="keep")
    skip = nonfinite_scores(scores, parts)  # NaN/Inf guard: nothing can be learned from this rollout
    if dist.any(skip is not None) and skip is None:
        skip = "a reward returned a non-finite value on another process"
    if skip is not None:
        note(f"update {u + 1}: {skip}; update skipped (no optimizer step)")
        scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
    if cfg.missing_eos_penalty is not None:
        scores = ops.apply_missing_eos_penalty(scores, rollout.has_eos, cfg.missing_eos_penalty, cfg.missing_eos_mode)
    if cfg.overlong_buffer is not None:
        overlong = ops.overlong_penalty(rollout.response_mask.sum(1), cfg.response_length, cfg.overlong_buffer,
                                        cfg.overlong_penalty)
        parts = {**parts, OVERLONG: overlong}
        scores = scores + overlong
    if cfg.score_clip is not None:
        scores = ops.clip_scores(scores, cfg.score_clip)
    return Round(list(idx), rollout, gen_logprobs, scores, parts, skip, t_gen - t0)


OVERLONG = "overlong"
"""The key of the overlong penalty among a round's score parts (logged as ``objective/overlong_penalty``)."""


def dynamic_rounds(state: PPOState, u: int, first: Round, start: int, seen: dict[int, int]) -> tuple[Round, dict]:
    """DAPO's dynamic sampling from the first round of update ``u`` (its prompts read from position ``start`` of
    the prompt order): drop the groups whose scores are all equal, sample the next prompts in their place for up to
    ``max_refill_rounds`` rounds, and join what has signal (or the first round whole, when nothing has). Returns the
    joined round and its metrics (``rollout/prompts_consumed`` moves the prompt cursor)."""
    cfg, batch, g = state.cfg, state.cfg.rollout_batch_size, state.cfg.samples_per_prompt
    kept, consumed, dropped, refill, rounds = [], len(first.idx), 0, 0, 0
    r, seconds = first, first.seconds
    while True:
        if r.skip is not None:  # a non-finite score: the update is skipped, on this round as it is
            return r, {"rollout/prompts_consumed": consumed}
        signal = ops.groups_with_signal(r.scores, g)
        dropped += int((~signal).sum())
        if bool(signal.any()):
            kept.append(r.select(signal, g))
        have = sum(len(k.idx) for k in kept)
        if have >= batch or rounds >= cfg.max_refill_rounds:
            break
        need = batch - have
        idx = prompt_stream(start + consumed, need, len(state.prompts), cfg.seed)
        consumed, refill, rounds = consumed + need, refill + need, rounds + 1
        r = sample_round(state, u, idx, seen)
        seconds += r.seconds
    metrics = {"rollout/prompts_consumed": consumed, "rollout/dropped_groups": dropped,
               "rollout/refill_groups": refill, "rollout/refill_rounds": rounds,
               "rollout/groups_trained": sum(len(k.idx) for k in kept)}
    if not kept:  # nothing has signal: the first round as it is (zero advantages, as without dynamic sampling)
        return replace(first, seconds=seconds), metrics
    if len(kept) == 1:
        return replace(kept[0], seconds=seconds), metrics
    rollout = concat_rollouts([k.rollout for k in kept], state.tokenizer.pad_token_id)
    with torch.no_grad(), state.autocast():  # old log-probs from the joined batch's forward: ratio 1 at step one
        logprobs = response_logprobs(state.policy, rollout.query_response, rollout.attention_mask,
                                     rollout.query_length, cfg.temperature, state.plan.micro_batch_size)
    rollout = replace(rollout, logprobs=torch.where(rollout.response_mask, logprobs, 0.0))
    joined = Round([i for k in kept for i in k.idx], rollout, torch.cat([k.gen_logprobs for k in kept]),
                   torch.cat([k.scores for k in kept]),
                   {name: torch.cat([k.parts[name] for k in kept]) for name in kept[0].parts}, None, seconds)
    return joined, metrics


def collect(state: PPOState, u: int) -> Scored:
    """Steps 1–4 of update ``u`` (0-based): sample, score, shape the rewards, estimate advantages."""
    cfg, t0, dist = state.cfg, time.perf_counter(), current(state.dist)
    # 1. rollout: sample completions from the tempered policy; old log-probs from the training forward. With several
    #    processes each takes its share of the update's prompts (a prompt's samples stay together on one process)
    start = state.cursor.position  # dynamic sampling reads on from its cursor; else update u reads u·B … u·B + B − 1
    idx = (prompt_stream(start, cfg.rollout_batch_size, len(state.prompts), cfg.seed) if cfg.dynamic_sampling
           else prompt_indices(u, cfg.rollout_batch_size, len(state.prompts), cfg.seed))
    seen: dict[int, int] = {}
    if dist.distributed:  # a prompt met twice in one update draws new samples the 2nd time, whichever rank has it
        lo, hi = dist.share_range(len(idx))
        for i in idx[:lo]:
            seen[i] = seen.get(i, 0) + 1
        idx = idx[lo:hi]
    r = sample_round(state, u, idx, seen)
    extra: dict[str, float] = {}
    if cfg.dynamic_sampling:  # drop the groups without signal, refill from the next prompts
        r, extra = dynamic_rounds(state, u, r, start, seen)
    rollout, gen_logprobs, scores, parts, skip = r.rollout, r.gen_logprobs, r.scores, r.parts, r.skip
    if OVERLONG in parts:
        extra["objective/overlong_penalty"] = float(parts.pop(OVERLONG).mean())
    mask = rollout.response_mask
    t_gen = t0 + r.seconds
    # 2. score: reference log-probs, critic values (no grad); the rewards were scored with each round
    with state.autocast():
        ref_logprobs = reference_logprobs(state.reference, rollout, cfg.temperature, state.plan.micro_batch_size)
    critic_mask = ops.critic_mask(mask, cfg.score_placement)
    values = None
    if rollout.values is not None:  # a shared critic's old values came with the old log-probs' forward
        values = torch.where(critic_mask, rollout.values, 0.0)
    elif state.critic is not None:
        with state.autocast():
            values = rollout_values(state.critic, rollout, critic_mask, state.plan.micro_batch_size)
    # 3. rewards: −β·KL at every token (KL-in-reward) and the score at one index
    kl = torch.where(mask, ops.kl_penalty(rollout.logprobs, ref_logprobs, cfg.kl_estimator, cfg.kl_log_ratio_clamp),
                     0.0)
    beta = state.kl_ctl.value if cfg.kl_in == "reward" else 0.0
    rewards = ops.shape_rewards(scores, kl, mask, beta, cfg.score_placement)
    if cfg.whiten_rewards:  # ops.whiten_rewards, with the moments of the whole batch over all processes
        rewards = dist.whiten(rewards, critic_mask, shift_mean=False)
    # 4. advantages: GAE with the critic, or a critic-free baseline
    advantages, returns = ops.ADVANTAGE_ESTIMATORS[cfg.advantage](
        rewards, values, critic_mask, scores, gamma=cfg.gamma, lam=cfg.lam, group_size=cfg.samples_per_prompt,
        eps=cfg.grpo_std_eps, whiten=dist.whiten,
    )
    if cfg.uses_critic and cfg.whiten_advantages:  # over the tokens the policy loss reads (N+: ~padding_mask)
        advantages = dist.whiten(advantages, mask)
    exp = Experience(
        query_response=rollout.query_response, attention_mask=rollout.attention_mask, response_mask=mask,
        critic_mask=critic_mask, logprobs=rollout.logprobs, ref_logprobs=ref_logprobs, values=values,
        rewards=rewards, advantages=advantages, returns=returns,
    )
    return Scored(exp, rollout, gen_logprobs, scores, parts, kl, skip, (t_gen - t0, time.perf_counter() - t_gen),
                  extra)


class UpdateStats:
    """The statistics of step 5, gathered in one place: micro-batch values weighted by their share of the
    minibatch's tokens, the largest ratio, the first minibatch's deviation from ratio 1, the gradient norm of each
    model per optimizer step, and the optimizer steps taken and skipped."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima = {"policy/ratio_max": -float("inf")}
        self.first = {"policy/first_minibatch_ratio_dev": 0.0, "policy/first_minibatch_clipfrac": 0.0}
        self.grad_norms: dict[str, list[float]] = {}
        self.steps = self.skipped = self.epochs_done = 0
        self.reason = ""
        """Why the last skipped optimizer step was skipped."""

    def add(self, stats: dict[str, float], share: float, pg: dict[str, Tensor], first_minibatch: bool) -> None:
        """One micro-batch's ``stats`` (``share``: its fraction of the minibatch's tokens) and policy-loss info."""
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * share
            self.weights[k] = self.weights.get(k, 0.0) + share
        self.maxima["policy/ratio_max"] = max(self.maxima["policy/ratio_max"], float(pg["ratio_max"]))
        if first_minibatch:  # ppo_details.md O1: ratio exactly 1 through every micro-batch of it
            dev = float(torch.maximum((pg["ratio_max"] - 1).abs(), (pg["ratio_min"] - 1).abs()))
            self.first["policy/first_minibatch_ratio_dev"] = max(self.first["policy/first_minibatch_ratio_dev"], dev)
            self.first["policy/first_minibatch_clipfrac"] = max(self.first["policy/first_minibatch_clipfrac"],
                                                                float(pg["clipfrac"]))

    def step(self, status: StepStatus) -> None:
        """One minibatch's optimizer step, taken or skipped."""
        self.steps += status.stepped
        self.skipped += not status.stepped
        self.reason = status.reason or self.reason
        for k, norm in (status.norms.items() if status.stepped else ()):
            self.grad_norms.setdefault(k, []).append(norm)

    def result(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k]}
        out.update(self.maxima)
        out.update(self.first)
        out.update({f"{'value' if k == 'critic' else k}/grad_norm": sum(v) / len(v)
                    for k, v in self.grad_norms.items()})
        out["train/optimizer_steps"] = self.steps
        out["train/skipped_steps"] = self.skipped
        out["train/epochs_done"] = self.epochs_done
        return out


def micro_batch_loss(state: PPOState, x: Experience, q: int, counts: dict[str, float], vcounts: dict[str, float],
                     share: float, train_policy: bool) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
    """The loss of one micro-batch ``x`` (query length ``q``), normalised by its minibatch's ``counts`` so the
    micro-batch losses add up to the minibatch's; with its statistics and the policy-loss info."""
    cfg = state.cfg
    new_values = None
    with state.autocast(), state.training_forward():  # the model forwards; log-prob and loss math stay float32
        if state.shared:  # one trunk pass gives logits and the hidden state the value head reads
            logits, hidden = causal_lm_logits_and_hidden(state.policy, x.query_response, x.attention_mask)
            logits = logits[:, q - 1 : -1]
            new_values = state.critic.values_from_hidden(hidden)[:, q - 1 : -1]
        else:
            logits = causal_lm_logits(state.policy, x.query_response, x.attention_mask)[:, q - 1 : -1]
            if state.critic is not None:
                new_values = critic_values(state.critic, x.query_response, x.attention_mask, q)
    new_logprobs = ops.logprobs_from_logits(logits, x.query_response[:, q:], cfg.temperature)
    pg_loss, pg = ops.clipped_policy_loss(
        new_logprobs, x.logprobs, x.advantages, x.response_mask, clip_low=cfg.clip_eps, clip_high=cfg.clip_eps_high,
        dual_clip=cfg.dual_clip, mode=cfg.loss_aggregation, **counts,
    )
    loss = pg_loss if train_policy else pg_loss * 0.0
    stats = {"policy/loss": float(pg_loss.detach()) / share if share else 0.0,
             "policy/clipfrac": float(pg["clipfrac"]), "policy/approx_kl": float(pg["approx_kl"]),
             "policy/ratio_mean": float(pg["ratio_mean"])}
    if cfg.entropy_coef > 0:
        ent = ops.entropy_from_logits(logits, cfg.temperature)
        loss = loss + cfg.entropy_coef * ops.entropy_loss(ent, x.response_mask, mode=cfg.loss_aggregation, **counts)
        stats["policy/entropy"] = float(ops.masked_mean(ent.detach(), x.response_mask))
    if cfg.kl_in == "loss" and state.kl_ctl.value > 0:
        kl_loss = ops.kl_loss(new_logprobs, x.ref_logprobs, x.response_mask, estimator=cfg.kl_estimator,
                              log_ratio_clamp=cfg.kl_loss_log_ratio_clamp, mode=cfg.loss_aggregation, **counts)
        loss = loss + state.kl_ctl.value * kl_loss
        stats["policy/kl_loss"] = float(kl_loss.detach()) / share if share else 0.0
    if state.critic is not None:
        vf_loss, vf = ops.clipped_value_loss(new_values, x.values, x.returns, x.critic_mask, clip=cfg.value_clip,
                                             mode="token_mean", **vcounts)
        loss = loss + cfg.vf_coef * vf_loss
        vshare = float(x.critic_mask.sum()) / vcounts["num_tokens"]
        stats.update({"value/loss": float(vf_loss.detach()) / vshare, "value/clipfrac": float(vf["clipfrac"])})
    return loss, stats, pg


def optimise(state: PPOState, exp: Experience, q: int, u: int) -> UpdateStats:
    """Step 5 of update ``u``: epochs × minibatches × micro-batches, one optimizer step per minibatch (gradients
    accumulated over its micro-batches); an early stop once a minibatch's approx KL passes ``target_kl``."""
    cfg, dist = state.cfg, current(state.dist)
    train_policy = u >= cfg.critic_warmup_updates
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "minibatch", u))
    acc = UpdateStats()
    named = state.models()
    # the minibatches are drawn over the whole batch; this process trains on the rows of each that it sampled
    first, last = (k * cfg.samples_per_prompt for k in dist.share_range(cfg.rollout_batch_size))
    epoch = 0
    for epoch in range(cfg.num_ppo_epochs):
        stop = False
        # dynamic sampling (one process only) may leave fewer rows than planned: the minibatches cut what there is
        sequences = None if dist.distributed else exp.batch_size
        for mb_number, mb_idx in enumerate(state.plan.minibatches(g, sequences)):
            mb = exp.select(mb_idx if not dist.distributed else
                            torch.tensor([i - first for i in mb_idx.tolist() if first <= i < last], dtype=torch.long))
            n_tok, n_crit = dist.sum([float(mb.response_mask.sum()), float(mb.critic_mask.sum())])  # whole minibatch
            counts = dict(num_tokens=n_tok, num_seqs=float(len(mb_idx)), max_len=float(mb.response_mask.shape[1]))
            vcounts = dict(counts, num_tokens=n_crit)
            rows = mb.response_mask.shape[0]  # this process's rows of the minibatch (none: it only joins the sums)

            def gradients(m: int) -> tuple[list, float, bool]:
                """Zeroed gradients, then this process's rows of the minibatch in micro-batches of ``m``:
                ``(stats, approx KL, finite)``. No collective inside, so one process may redo it alone."""
                for opt in state.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                added, kl_sum = [], 0.0
                for micro_idx in torch.arange(rows).split(m):
                    if not len(micro_idx):
                        continue
                    x = mb.select(micro_idx)
                    share = float(x.response_mask.sum()) / counts["num_tokens"]
                    loss, stats, pg = micro_batch_loss(state, x, q, counts, vcounts, share, train_policy)
                    if not bool(torch.isfinite(loss.detach())):  # NaN/Inf guard: no backward, the step is skipped
                        return added, kl_sum, False
                    loss.backward()
                    added.append((stats, share, pg))
                    kl_sum += float(pg["approx_kl"]) * share
                return added, kl_sum, True

            (added, mb_kl, finite), m = retry_on_oom(gradients, state.plan.micro_batch_size, max(rows, 1),
                                                     on_retry=lambda old, new: note(
                                                         f"update {u + 1}: out of memory at micro_batch_size={old}; "
                                                         f"redoing the minibatch with {new} (the update is unchanged)"))
            if m != state.plan.micro_batch_size:  # keep the size that fitted for the rest of the run
                state.micro_batch = m
                state.plan = dataclasses.replace(state.plan, micro_batch_size=m)
            for stats, share, pg in added:
                acc.add(stats, share, pg, first_minibatch=epoch == 0 and mb_number == 0)
            params = {k: [p for p in mod.parameters() if p.grad is not None or (dist.distributed and p.requires_grad)]
                      for k, mod in named.items()}
            status = guarded_step(params, state.optimizers, cfg.max_grad_norm, finite,
                                  frozen=() if train_policy else ("policy",), dist=dist)
            if dist.distributed:
                (mb_kl,) = dist.sum([mb_kl])
            if not status.stepped:
                note(f"update {u + 1}: {status.reason}, optimizer step skipped")
            acc.step(status)
            if cfg.target_kl is not None and mb_kl > cfg.target_kl:
                stop = True
                break
        if stop:
            break
    acc.epochs_done = epoch + 1
    if dist.distributed:
        reduce_stats(acc, dist)
    return acc


def reduce_stats(acc: UpdateStats, dist: Dist) -> None:
    """Step 5's statistics of the whole batch: the token-weighted sums and their weights added over processes, the
    maxima taken over them (the gradient norms and step counts are already the same on every process)."""
    parts = dist.gather((acc.sums, acc.weights, acc.maxima, acc.first))
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for s, w, _, _ in parts:
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in w.items():
            weights[k] = weights.get(k, 0.0) + v
    acc.sums, acc.weights = sums, weights
    acc.maxima = {k: max(p[2][k] for p in parts) for k in acc.maxima}
    acc.first = {k: max(p[3][k] for p in parts) for k in acc.first}


def whole_batch(dist: Dist, s: Scored, seq_kl: Tensor) -> tuple[Scored, Tensor]:
    """The scored rollout of the whole batch, gathered from every process in rank order (= the one-process order,
    each process holding a contiguous share of the prompts), for the report, the samples and the monitor. It holds
    the response columns only (``query_length`` 0): nothing after the optimisation reads the queries."""
    ro, ex = s.rollout, s.exp
    mine = {"rollout": {k: getattr(ro, k) for k in ("response_mask", "has_eos", "logprobs", "prompts", "completions")},
            "exp": {k: getattr(ex, k) for k in ("response_mask", "critic_mask", "logprobs", "ref_logprobs", "values",
                                                 "rewards", "advantages", "returns")},
            "gen_logprobs": s.gen_logprobs, "scores": s.scores, "parts": s.parts, "kl": s.kl, "seq_kl": seq_kl}
    # on the CPU before pickling: a CUDA tensor would come back on the sending rank's GPU
    mine = _to_cpu(mine)
    every = dist.gather(mine)

    def cat(items: list[Any]) -> Any:
        if items[0] is None:
            return None
        if isinstance(items[0], Tensor):
            return torch.cat(items)
        return [x for it in items for x in it]

    r = {k: cat([e["rollout"][k] for e in every]) for k in mine["rollout"]}
    x = {k: cat([e["exp"][k] for e in every]) for k in mine["exp"]}
    responses = torch.zeros(r["response_mask"].shape, dtype=torch.long)
    rollout = Rollout(query_response=responses, attention_mask=r["response_mask"], query_length=0, **r)
    exp = Experience(query_response=responses, attention_mask=x["response_mask"], **x)
    scored = Scored(exp, rollout, cat([e["gen_logprobs"] for e in every]), cat([e["scores"] for e in every]),
                    {k: cat([e["parts"][k] for e in every]) for k in s.parts}, cat([e["kl"] for e in every]),
                    s.skip, s.seconds)
    return scored, cat([e["seq_kl"] for e in every])


def _to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts/lists of tensors and other values) with every tensor moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def skipped_update(cfg: PPOConfig, reason: str) -> UpdateStats:
    """Step 5's statistics for a rollout that could not be learned from (no optimizer step)."""
    acc = UpdateStats()
    acc.skipped, acc.reason = cfg.num_ppo_epochs * cfg.num_minibatches, reason
    acc.sums.clear()
    acc.maxima.clear()
    acc.first.clear()
    return acc


def nonfinite_scores(scores: Tensor, parts: dict[str, Tensor]) -> Optional[str]:
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


def report(state: PPOState, s: Scored, train: dict[str, float], u: int, lrs: dict[str, float], beta: float,
           seq_kl: Tensor, seconds: float) -> dict[str, float]:
    """Step 6: the metrics of update ``u`` (``lrs``, ``beta``: what this update used; ``seq_kl``: (B,) sequence KL
    to the reference; ``seconds``: the update's wall time)."""
    cfg, rollout, mask, scores = state.cfg, s.rollout, s.exp.response_mask, s.scores
    policy_trains = u >= cfg.critic_warmup_updates
    t_roll, t_score = s.seconds
    metrics: dict[str, float] = {
        "update": u + 1,
        "objective/score": float(scores.mean()),
        **{f"objective/score/{k}": float(v.mean()) for k, v in s.parts.items()},
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_coef": beta,
        "objective/kl_penalty": float(ops.sequence_sum(s.kl, mask).mean()),
        "objective/rlhf_reward": float((scores - beta * seq_kl).mean()),
        "objective/entropy": float(ops.sequence_sum(-rollout.logprobs, mask).mean()),
        "response/length_mean": float(mask.sum(1).float().mean()),
        "response/eos_fraction": float(rollout.has_eos.float().mean()),
        # tokens the sampler produced: every row runs to response_length without stop_at_eos, else to the longest
        "rollout/sampled_tokens": float(mask.shape[0] * (int(mask.sum(1).max()) if cfg.stop_at_eos
                                                         else cfg.response_length)),
        "rollout/logprob_mismatch_max": float((s.gen_logprobs - rollout.logprobs).abs().masked_fill(~mask, 0).max()),
        "time/rollout_s": t_roll,
        "time/score_s": t_score,
        "time/update_s": seconds - t_roll - t_score,
        "perf/tokens_per_s": int(mask.sum()) / max(seconds, 1e-9),
        "lr/policy": lrs["policy"] if policy_trains else 0.0,
        **({"lr/critic": lrs["critic"]} if "critic" in lrs else {}),
        **train,
    }
    metrics.update(s.extra)
    metrics["train/skipped_update"] = float(s.skip is not None)
    if s.skip is not None:  # the zeros that stood in for NaN/Inf are not the rollout's score
        metrics["objective/score"] = metrics["objective/rlhf_reward"] = float("nan")
    if s.exp.values is not None:
        metrics["value/explained_variance"] = float(ops.explained_variance(s.exp.values, s.exp.returns,
                                                                           s.exp.critic_mask))
        metrics["value/mean"] = float(ops.masked_mean(s.exp.values, s.exp.critic_mask))
    return metrics


@dataclass
class UpdateResult:
    """What one update gives the run loop."""

    metrics: dict[str, float]
    scored: Scored
    skipped: bool
    """No optimizer step was taken (every one skipped for a non-finite reward, loss or gradient)."""
    reason: str
    """Why the last skipped step was skipped ("" when none was)."""


def ppo_update(state: PPOState, u: int) -> UpdateResult:
    """One whole update ``u`` (0-based): steps 1–6; then β and the learning rates move (the policy's only once it
    trains: the critic warm-up spends neither its schedule nor an adaptive β)."""
    cfg, t0 = state.cfg, time.perf_counter()
    s = collect(state, u)  # 1–4
    state.cursor.position += int(s.extra.get("rollout/prompts_consumed", 0))
    train = optimise(state, s.exp, s.rollout.query_length, u) if s.skip is None else skipped_update(cfg, s.skip)  # 5
    policy_trains = u >= cfg.critic_warmup_updates
    lrs = {k: o.param_groups[0]["lr"] for k, o in state.optimizers.items()}  # the rates this update used
    beta = state.kl_ctl.value
    seq_kl = ops.sequence_sum(ops.kl_penalty(s.rollout.logprobs, s.exp.ref_logprobs, "k1"), s.exp.response_mask)
    dist = current(state.dist)
    if dist.distributed:  # from here on: the whole batch, the same on every process
        s, seq_kl = whole_batch(dist, s, seq_kl)
    if policy_trains:
        state.kl_ctl.update(float(seq_kl.mean()), state.plan.sequences)
    for k, sched in state.schedulers.items():
        if k != "policy" or policy_trains:
            step_scheduler(sched)
    metrics = report(state, s, train.result(), u, lrs, beta, seq_kl, time.perf_counter() - t0)  # 6
    metrics["train/micro_batch_size"] = state.plan.micro_batch_size
    return UpdateResult(metrics, s, skipped=train.steps == 0 and train.skipped > 0, reason=train.reason)
