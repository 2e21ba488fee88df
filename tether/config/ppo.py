"""``PPOConfig``: every option of the PPO stage, documented once, validated once.

Defaults follow the N+ reference (Huang et al. 2024) except where a small model on a CPU argues otherwise; each
such departure says why in its docstring.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from tether.config.base import DeviceName, OutputDir, ResumeSpec, Section
from tether.config.lora import LoraConfig
from tether.config.monitor import MonitorConfig
from tether.config.presets import PRESET_NAMES

PresetName = Literal[PRESET_NAMES]  # type: ignore[valid-type]  # the names of tether.config.presets.PRESETS

Estimator = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
GROUP = {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}


class RewardSpec(Section):
    """One reward source: a reward-model directory or a Python function, with a weight."""

    kind: Literal["model", "python", "judge"] = "model"
    """`model`: a 1-label sequence-classification directory; `python`: a function `module:name` taking
    (prompts, completions) and returning one float per completion; `judge`: a named judge such as `vader`."""
    path: str
    """Directory of the reward model, `module:function` for Python rewards, or the judge's name."""
    name: Optional[str] = None
    """Name used in the logs (`objective/score/<name>`); defaults to the directory or function name."""
    weight: float = 1.0
    """Weight of this source in the combined score."""
    normalize: Literal["none", "batch"] = "none"
    """`batch` standardises this source's scores over each rollout batch before weighting."""


class PPOConfig(Section):
    """PPO (and the critic-free estimators) for a causal LM against one or more rewards."""

    # --- preset ------------------------------------------------------------------------------------
    preset: Optional[PresetName] = None
    """Fill every option you do not set yourself with another system's documented defaults: `nplus` (the N+
    implementation details, Huang et al.), `lmhp` (lm-human-preferences, Ziegler et al.), `trl` (TRL's PPOTrainer),
    `openrlhf`, `verl_ppo`, `verl_grpo`. Options you set win, wherever you set them; docs/presets.md has each
    preset's table with the source of every value and what is not mapped."""

    # --- models and data -------------------------------------------------------------------------
    policy: Optional[str] = None
    """Directory of the policy (a `save_pretrained` causal LM with its tokenizer), or a Hub name in the local cache.
    Required on the command line."""
    reference: Optional[str] = None
    """Directory of the frozen reference policy; default: a frozen copy of the initial policy."""
    critic: Optional[str] = None
    """With `critic_mode: separate`: the directory to initialise the critic from; default: the reward model when it
    shares the policy's tokenizer, else the policy (a fresh value head either way)."""
    critic_mode: Literal["separate", "shared"] = "shared"
    """`shared` (default): a value head on the policy's own trunk, one forward for logits and values and no second
    model in memory; the value loss then also trains the trunk (vf_coef weighs it). `separate`: the critic is its
    own model, initialised from `critic`, the reward model or the policy (N+, Stiennon et al.; the `nplus`, `trl`,
    `openrlhf` and `verl_ppo` presets). Why shared is the default: docs/performance.md, "The defaults"."""
    policy_lora: Optional[LoraConfig] = None
    """Train a LoRA adapter (through peft) instead of every weight of the policy: `r`, `alpha`, `dropout` (must be
    0), `target_modules`, `merge_on_save`. The reference is then the same model with the adapter switched off (no
    second copy), `final/` and `best/` hold the adapter (and `merged/` with `merge_on_save`); null: full
    fine-tuning (docs/memory.md)."""
    critic_lora: Optional[LoraConfig] = None
    """Give the separate critic its own LoRA adapter on its own frozen trunk (the value head trains fully); null:
    every critic weight trains. Only with `critic_mode: separate`."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block in the backward pass instead of keeping its activations (policy and critic
    training forwards): less memory, about one more forward of time; gradients unchanged (docs/memory.md)."""
    rewards: list[RewardSpec] = Field(default_factory=list)
    """Reward sources, combined as a weighted sum of their (optionally normalised) scores."""
    prompts: Optional[str] = None
    """Prompts with a `prompt` or chat `messages` column: a JSONL/JSON/CSV/parquet file (also .gz/.zst), a glob, a
    directory of shards, a `datasets` directory or a cached Hub dataset name (docs/data.md)."""
    output_dir: OutputDir = "runs/ppo"
    """Where metrics.jsonl, samples and the final model (`final/`) are written."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run. Off unless you trust the checkpoint."""
    pad_policy: Literal["add", "refuse"] = "add"
    """When the tokenizer has no pad token or pads with EOS: `add` a distinct `<|pad|>` token, or `refuse`."""
    device: DeviceName = "auto"
    """Where PPO runs, every model of it (policy, reference, critic, reward models) and the rollout, scores,
    advantages and losses: `auto` (CUDA when a GPU is visible, else the CPU), `cpu`, `cuda` or `cuda:N`; a CUDA
    device that is not there is refused in one line when the run starts. Scores of Python reward functions are moved
    to the device. The sampled tokens are drawn from uniforms made on the CPU (tether.rollout.sampler), so a seed
    draws the same completions on every device up to logit rounding. The CUDA path has not been run on a GPU yet
    (docs/performance.md, "GPU"). Under `torchrun`/`accelerate launch` each process samples and trains on its share
    of the prompts (README, "Devices and several processes")."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype of the frozen reference and reward models (bfloat16 halves their memory; the KL to the reference
    then carries its rounding). The policy and critic always train in float32."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Run every model forward of the policy, reference and critic (generation, scoring, training) under
    `torch.autocast` in this dtype: bf16 matmuls, float32 weights, optimizer state, log-prob and loss math. Faster
    where the CPU/GPU has bf16 units; watch `rollout/logprob_mismatch_max` and
    `policy/first_minibatch_ratio_dev`, which then measure bf16 rounding (docs/performance.md)."""

    # --- run length and batch sizes ---------------------------------------------------------------
    num_updates: int = Field(20, ge=1)
    """Number of PPO updates (each: one rollout, then `num_ppo_epochs` passes over it)."""
    time_limit_s: Optional[float] = Field(None, gt=0)
    """Wall-time budget (seconds of training, held-out evaluations included, across resumes): the run stops after
    the update during which it is reached (a fresh run takes at least one; that update is evaluated when held-out
    evaluation is on) and saves `final/` as at a normal end; num_updates stays the upper bound. null: no limit. With
    a `linear`/`cosine` schedule the learning rate still anneals over num_updates (`tether compare` uses `constant`
    for this)."""
    rollout_batch_size: int = Field(16, ge=1)
    """Prompts per update."""
    samples_per_prompt: int = Field(1, ge=1)
    """Completions sampled per prompt; group estimators (grpo, dr_grpo, rloo, reinforce_pp_baseline) need ≥ 2."""
    num_minibatches: int = Field(1, ge=1)
    """Minibatches per epoch (one optimizer step each). Must divide rollout_batch_size × samples_per_prompt."""
    micro_batch_size: Union[int, Literal["auto"]] = 8
    """Sequences per forward/backward; gradients accumulate over a minibatch. Must divide the minibatch size.
    `auto`: the memory planner picks the largest divisor of the minibatch size whose estimated peak fits the
    device's memory with a 20 % margin (logged, and recorded as `train/micro_batch_size`); an out-of-memory error
    halves it and redoes the minibatch (docs/memory.md)."""
    num_ppo_epochs: int = Field(4, ge=1)
    """Passes over each rollout (N+: 4)."""
    seed: int = 0
    """Seed for sampling, minibatch order and initialisation. Same seed, machine and threads ⇒ same result."""

    # --- sampling ----------------------------------------------------------------------------------
    response_length: int = Field(32, ge=1)
    """Maximum new tokens per completion."""
    max_prompt_length: int = Field(128, ge=1)
    """Prompts longer than this (in tokens) are handled as `prompt_truncation` says."""
    prompt_truncation: Literal["left", "error"] = "left"
    """`left` keeps the last max_prompt_length tokens; `error` refuses the prompt file."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature; training and reference log-probs use the same one (N+: 0.7)."""
    stop_at_eos: bool = True
    """Stop a completion at its first EOS. Off: always sample response_length tokens, then truncate at EOS
    (N+ style); the masks are the same either way."""

    # --- optimisation ------------------------------------------------------------------------------
    lr: float = Field(1e-5, gt=0)
    """Policy learning rate. N+ uses 3e-6 for 1B+ models; small models take 1e-5 (Ziegler et al., GPT-2 124M)."""
    critic_lr: float = Field(1e-5, gt=0)
    """Critic learning rate."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule over updates; `linear` anneals to 0 at the last update (N+)."""
    warmup_updates: int = Field(0, ge=0)
    """Updates of linear learning-rate warm-up."""
    adam_eps: float = Field(1e-5, gt=0)
    """AdamW epsilon (N+: 1e-5)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    """Clip the global gradient norm of each model to this; null disables (N+ configures none)."""
    critic_warmup_updates: int = Field(0, ge=0)
    """Updates at the start in which only the critic is trained (needs `advantage: gae`). The policy is frozen then:
    its learning-rate schedule (over the remaining updates) and an adaptive β start when it starts training."""
    target_kl: Optional[float] = Field(None, gt=0)
    """Early stop: after each optimizer step, when that minibatch's approx-KL to the rollout policy exceeded this, the
    update's remaining minibatches and epochs are skipped (`train/optimizer_steps`, `train/epochs_done` show it)."""

    # --- PPO objective -----------------------------------------------------------------------------
    advantage: Estimator = "gae"
    """Advantage estimator: `gae` (PPO with a critic) or a critic-free one."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO ratio clip ε (lower side, and upper side unless clip_eps_high is set)."""
    clip_eps_high: Optional[float] = Field(None, gt=0)
    """Upper clip ε for an asymmetric clip (DAPO's clip-higher); default = clip_eps."""
    dual_clip: Optional[float] = Field(None, gt=1)
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens; null disables."""
    value_clip: Optional[float] = Field(0.2, gt=0)
    """Value clip ε_v in reward units (N+: 0.2); null trains the critic unclipped."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss (N+: 0.1)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus (0 in the LLM references)."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount γ (1 for LLMs)."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE λ (0.95)."""
    whiten_advantages: bool = True
    """Whiten GAE advantages over the response tokens of each rollout batch, the tokens the policy loss reads (N+:
    without the `eos+1` slot). The critic-free estimators normalise their own way."""
    grpo_std_eps: float = Field(1e-6, gt=0)
    """ε of GRPO's advantage (R − mean)/(std + ε) within a group. With the default, two returns 1e-5 apart get
    advantages of about ±0.6; set it near the score differences you consider ties (e.g. 0.01–0.1 for scores of
    order 1) to damp near-ties. Only `advantage: grpo` reads it."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling, for the group estimators (grpo, dr_grpo, rloo, reinforce_pp_baseline): after scoring,
    drop every group whose scores are all equal (zero advantage, no signal) and sample the next prompts of the seeded
    prompt order in their place, until the batch holds rollout_batch_size groups with signal or max_refill_rounds
    refills are spent; then train on the groups there are (`rollout/groups_trained`). Each update therefore consumes
    a variable number of prompts (`rollout/prompts_consumed`); the prompt cursor is saved with each checkpoint."""
    max_refill_rounds: int = Field(3, ge=0)
    """With dynamic_sampling: the most refill rounds per update (each samples as many new prompts as groups are
    missing); 0 only drops the groups without signal."""
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = (
        "token_mean"
    )
    """How per-token losses become a scalar; normalised by minibatch-wide counts so micro-batching does not matter."""

    # --- KL and reward shaping ---------------------------------------------------------------------
    kl_coef: float = Field(0.05, ge=0)
    """Initial KL coefficient β (N+: 0.05)."""
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    """`adaptive` moves β towards kl_target (Ziegler et al.)."""
    kl_target: float = Field(6.0, gt=0)
    """Target per-sequence KL (nats) of the adaptive controller."""
    kl_horizon: float = Field(10000.0, gt=0)
    """Horizon (episodes) of the adaptive controller."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator (k1 in every PPO reference): k1 = log π/π_ref, k2 = ½(log π/π_ref)², k3 = π_ref/π − 1 −
    log π_ref/π. Logged per sequence as `objective/kl_penalty`."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Put −β·KL into the per-token reward (PPO) or add β·KL to the loss (GRPO style). In the loss use k3 (GRPO) or
    k2 (its gradient is that of the KL); k1 is refused there, its expected gradient being 0."""
    kl_log_ratio_clamp: Optional[float] = Field(None, gt=0)
    """Clamp the per-token log-ratio to ±this before the estimator (guards k3's exp). null: no clamp in the reward
    (`kl_in: reward`), and ±10 in the KL loss (`kl_in: loss`), whose gradient an unclamped k3 can blow up; the one
    rule is `kl_loss_log_ratio_clamp`."""
    score_placement: Literal["eos", "eos+1"] = "eos"
    """Token that receives the sequence score: the EOS, or the slot after it (N+/TRL compatibility)."""
    missing_eos_penalty: Optional[float] = None
    """Penalty for completions without EOS; null disables."""
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    """`subtract` the penalty from the score (TRL) or `replace` the score by −penalty (N+)."""
    overlong_buffer: Optional[int] = Field(None, ge=1)
    """DAPO's soft overlong punishment: the last this many tokens of response_length (L_cache) are a buffer in which
    the score falls linearly, from 0 at response_length − overlong_buffer tokens to −overlong_penalty at
    response_length (`ops.overlong_penalty`; logged as `objective/overlong_penalty`). Applied after the missing-EOS
    penalty, before score_clip. null disables."""
    overlong_penalty: float = Field(1.0, gt=0)
    """The overlong punishment at full length (DAPO: 1). Only read with overlong_buffer set."""
    score_clip: Optional[float] = Field(None, gt=0)
    """Clip combined scores to ±this; null disables."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance (keeping their mean) before GAE (lm-human-preferences). Only with
    `advantage: gae`: the critic-free estimators normalise their own returns, and whitening first would mix scales."""

    # --- logging -----------------------------------------------------------------------------------
    sample_every: int = Field(5, ge=0)
    """Write a table of sample completions every this many updates (0: never)."""
    num_samples_logged: int = Field(4, ge=0)
    """Completions per sample table."""
    progress: bool = True
    """Show a progress bar when stderr is a terminal."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """TensorBoard/W&B logs, held-out evaluation and the best checkpoint, alarms, the end-of-run report, and the
    pre-flight checks (docs/monitoring.md)."""

    # --- checkpoints and resume (docs/reliability.md) ---------------------------------------------
    resume: ResumeSpec = "auto"
    """`auto`: continue from the newest good checkpoint in output_dir (a finished run is left as it is); `never`:
    start over, refusing an output_dir that already holds a run; or the path of a checkpoint directory to continue
    from."""
    checkpoint_every: int = Field(5, ge=0)
    """Write a checkpoint (`output_dir/checkpoints/update-N/`) every this many updates and after the last; 0: only
    after the last."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on disk (the newest); older ones are deleted once a newer one is complete."""
    max_consecutive_skips: int = Field(3, ge=1)
    """Stop the run (exit code 3, last checkpoint kept) after this many updates in a row in which no optimizer step
    could be taken because a reward, loss or gradient was NaN/Inf."""

    RESUME_SAFE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume", "progress", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips",
        "sample_every", "num_samples_logged", "monitor"})
    """Fields a resumed run may change: they move outputs or logs, never the trained weights."""
    RUN_LENGTH: ClassVar[frozenset[str]] = frozenset({"num_updates", "time_limit_s"})
    """Fields that may grow on resume when the learning-rate schedule does not depend on them (`constant`)."""

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("preset", "preset"), ("models and data", "policy"), ("run length and batch sizes", "num_updates"), ("sampling", "response_length"),
        ("optimisation", "lr"), ("PPO objective", "advantage"), ("KL and reward shaping", "kl_coef"),
        ("logging", "sample_every"), ("checkpoints and resume", "resume"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""

    @model_validator(mode="before")
    @classmethod
    def _shortcuts(cls, data: Any) -> Any:
        """The preset's values for the options not given (config/presets.py), then `reward_model`, `reward_fn`,
        `total_episodes` → `rewards` entries, `num_updates` (config/shortcuts.py; `total_episodes` divides by the
        preset's rollout_batch_size unless you set one)."""
        from tether.config.presets import expand_preset
        from tether.config.shortcuts import expand_ppo_shortcuts

        return expand_ppo_shortcuts(expand_preset(data))

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro_batch(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("must be a positive integer or auto")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> "PPOConfig":
        batch = self.rollout_batch_size * self.samples_per_prompt
        if batch % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide rollout_batch_size × samples_per_prompt = {batch}"
            )
        mini = batch // self.num_minibatches
        if self.micro_batch_size != "auto" and mini % self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} must divide the minibatch size {mini}")
        if self.advantage in GROUP and self.samples_per_prompt < 2:
            raise ValueError(f"advantage={self.advantage} needs samples_per_prompt >= 2 (a group baseline of one is 0)")
        if self.critic_mode == "shared" and self.critic:
            raise ValueError("critic: a critic directory needs critic_mode=separate (the default, shared, puts the "
                             "value head on the policy's trunk); set critic_mode=separate or remove critic")
        if self.policy_lora is not None:
            if self.policy_lora.dropout > 0:
                raise ValueError(f"policy_lora.dropout={self.policy_lora.dropout}: PPO needs 0 (a dropout makes the "
                                 "first-minibatch ratio differ from 1 and the reference forward random)")
            if self.reference:
                raise ValueError("reference: cannot be used with policy_lora (the reference is the policy with its "
                                 "adapter switched off); remove one of them")
        if self.critic_lora is not None:
            if self.critic_mode == "shared":
                raise ValueError("critic_lora: needs critic_mode=separate (the default, shared, is a value head on "
                                 "the policy's trunk, trained with the policy's adapter)")
            if not self.uses_critic:
                raise ValueError(f"critic_lora: advantage={self.advantage} uses no critic")
            if self.critic_lora.dropout > 0:
                raise ValueError(f"critic_lora.dropout={self.critic_lora.dropout}: PPO needs 0 (the rollout's values "
                                 "and the training forward must agree)")
        if self.critic_warmup_updates and not self.uses_critic:
            raise ValueError(f"critic_warmup_updates={self.critic_warmup_updates} needs a critic (advantage=gae); "
                             f"advantage={self.advantage} has none")
        if self.critic_warmup_updates >= self.num_updates:
            raise ValueError(f"critic_warmup_updates={self.critic_warmup_updates} must be < num_updates="
                             f"{self.num_updates}, or the policy never trains")
        policy_updates = self.num_updates - self.critic_warmup_updates
        if self.warmup_updates >= policy_updates and self.warmup_updates:
            if not self.critic_warmup_updates:
                raise ValueError(f"warmup_updates={self.warmup_updates} must be < num_updates={self.num_updates}")
            raise ValueError(f"warmup_updates={self.warmup_updates} must be < num_updates − critic_warmup_updates = "
                             f"{policy_updates}, the updates that train the policy")
        if self.kl_in == "loss" and self.kl_estimator == "k1":
            raise ValueError("kl_in=loss with kl_estimator=k1: the k1 loss has zero expected gradient (E_π[∇ log π] = "
                             "0); set kl_estimator=k3 (GRPO) or k2 (the gradient of the KL)")
        if self.overlong_buffer is not None and self.overlong_buffer > self.response_length:
            raise ValueError(f"overlong_buffer={self.overlong_buffer} must be <= response_length="
                             f"{self.response_length}")
        if self.dynamic_sampling and self.advantage not in GROUP:
            raise ValueError(f"dynamic_sampling: needs a group estimator ({', '.join(sorted(GROUP))}); advantage="
                             f"{self.advantage} " + ("learns from a critic, so a group of equal scores still has "
                                                     "advantages" if self.uses_critic else "has no group baseline"))
        if self.whiten_rewards and not self.uses_critic:
            raise ValueError(f"whiten_rewards: only with advantage=gae; advantage={self.advantage} normalises its own "
                             "returns, and whitening the per-token rewards first mixes scales")
        return self

    @property
    def scoring_micro_batch(self) -> int:
        """Micro-batch of the no-gradient forwards outside an update (held-out evaluation, `tether doctor`):
        `micro_batch_size`, or 8 with `auto` (the planner's choice is made when the trainer has its models)."""
        return 8 if self.micro_batch_size == "auto" else self.micro_batch_size

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"

    @property
    def kl_loss_log_ratio_clamp(self) -> float:
        """The log-ratio clamp of the KL loss (`kl_in: loss`): `kl_log_ratio_clamp`, or ±10 when that is null."""
        return self.kl_log_ratio_clamp if self.kl_log_ratio_clamp is not None else 10.0
