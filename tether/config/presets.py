"""Presets: ``preset: NAME`` fills the PPO config with another system's documented defaults.

One mechanism for every entry point: ``PPOConfig``'s ``mode="before"`` validator (:func:`expand_preset`) takes the
preset's values for every option the user's mapping does not set, so a value the user gives always wins, whatever its
place (YAML, command line, before or after ``preset=``) — in ``tether ppo``, a pipeline's ``ppo.preset`` and the Python
API alike (``PPOConfig(preset="trl", kl_coef=0.1)``). The validated config keeps ``preset`` and every resolved value,
so a saved run says what it ran with.

Each preset is a table of :class:`Setting` rows (tether option, value, that system's name for it, source, how the
mapping works) plus :class:`NotMapped` rows for that system's settings tether has no option for. ``docs/presets.md``
is generated from these tables (:func:`presets_markdown`; a test checks it). The sources are
``../shared/reference/ppo_details.md`` (§1, the defaults side by side; §2 items by letter) and the systems' own
config files at the commits named in :data:`SOURCES`.

Batch sizes: tether counts prompts per update (``rollout_batch_size``), completions per prompt and minibatches per
epoch on one process. Where a system counts per GPU or in samples, the row says how its number was converted (on one
GPU). ``micro_batch_size`` is a memory knob (the loss is normalised over the whole minibatch), so presets leave it to
the user; it must divide the minibatch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Setting:
    """One tether option a preset sets."""

    field: str
    """tether's option (a ``PPOConfig`` field)."""
    value: Any
    """The value the preset gives it."""
    theirs: str
    """That system's name for it, with its value as that system writes it."""
    source: str
    """Where the value is documented (a key of :data:`SOURCES` and the place in it)."""
    note: str = ""
    """How the mapping works when it is not one-to-one."""


@dataclass(frozen=True)
class NotMapped:
    """A setting of that system that tether has no option for (or leaves to the user); never silently dropped."""

    theirs: str
    """That system's name and value."""
    why: str
    """Why tether does not map it, and what tether does instead."""
    source: str
    """Where it is documented."""
    field: Optional[str] = None
    """The tether option that keeps its own default because of this (None: no tether option concerned)."""


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    about: str
    settings: tuple[Setting, ...]
    not_mapped: tuple[NotMapped, ...]

    def values(self) -> dict[str, Any]:
        """``{tether option: value}`` of this preset."""
        return {s.field: s.value for s in self.settings}


SOURCES: dict[str, str] = {
    "§1": "`../shared/reference/ppo_details.md` §1 (reference defaults at a glance); §0/§2 items by their letter",
    "nplus-code": "`vwxyzjn/summarize_from_feedback_details` `summarize_from_feedback_details/ppo.py` (the N+ code, "
                  "NPLUS-CODE in ppo_details.md §7)",
    "lmhp-code": "`openai/lm-human-preferences` `lm_human_preferences/train_policy.py` and `utils/core.py` "
                 "(commit 1ab856db)",
    "trl": "`huggingface/trl` v0.29.1 `trl/experimental/ppo/ppo_config.py` and `ppo_trainer.py` (v0.12–v0.28: "
           "`trl/trainer/ppo_config.py`, v0.11: `ppov2_config.py`, same values except `learning_rate`), over "
           "`transformers.TrainingArguments`' defaults",
    "openrlhf": "`OpenRLHF/OpenRLHF` v0.11.0 (commit 3c3be623) `openrlhf/cli/train_ppo_ray.py`, "
                "`openrlhf/trainer/ppo_utils/experience_maker.py`, `openrlhf/models/loss.py`",
    "verl": "`volcengine/verl` v0.7.0 (commit f9c855f7) `verl/trainer/config/_generated_ppo_trainer.yaml` (the "
            "flattened `ppo_trainer.yaml`), `verl/trainer/ppo/core_algos.py`",
    "verl-grpo": "`volcengine/verl` v0.7.0 `docs/algo/grpo.md` (what to change for GRPO) and "
                 "`examples/grpo_trainer/run_qwen3-8b.sh`",
}
"""Source keys used in the tables' source column."""


def _s(field: str, value: Any, theirs: str, source: str, note: str = "") -> Setting:
    return Setting(field, value, theirs, source, note)


_NOT_RUN_LENGTH = "the run length of that system's experiment, not a recipe setting: tether's `num_updates` (or " \
                  "`total_episodes`) stays yours"
_SEED = "a seed is not a recipe setting: tether's `seed` stays yours"
_MICRO = "a memory knob (per-device micro-batch); the loss is normalised over the whole minibatch either way, so " \
         "tether's `micro_batch_size` stays yours (it must divide the minibatch)"
_DROPOUT = "tether always disables dropout in every model (ppo_details.md E4)"
_PURE = "tether always samples purely from softmax(logits/T): no top-k/top-p (ppo_details.md D1)"

_NPLUS = Preset(
    "nplus", "N+ implementation details (Huang et al. 2024)",
    "The PPO recipe of \"The N+ Implementation Details of RLHF with PPO\" on TL;DR summarisation (Pythia 1B–6.9B): "
    "the N+ TL;DR column of ppo_details.md §1, with the code's own defaults where §1 is silent.",
    (
        _s("critic_mode", "separate", "separate critic (a scalar model initialised from the RM)", "§1 critic init"),
        _s("rollout_batch_size", 512, "episodes per PPO batch 512 (`local_micro_batch_size` 1 × "
           "`gradient_accumulation_steps` 64 × 8 GPUs)", "§1 episodes per PPO batch",
           "one query per episode, so 512 prompts per update"),
        _s("samples_per_prompt", 1, "one response per query", "§0 B"),
        _s("num_minibatches", 1, "`nminibatches` 1", "§1 PPO epochs / minibatches"),
        _s("num_ppo_epochs", 4, "`noptepochs` 4", "§1 PPO epochs / minibatches"),
        _s("response_length", 53, "`response_length` 53", "§0 R"),
        _s("max_prompt_length", 512, "query length Q 512", "§0 Q",
           "N+ fits the query into 512 tokens by smart truncation of the post; tether keeps the last 512 tokens"),
        _s("temperature", 0.7, "`temperature` 0.7", "§1 sampling"),
        _s("stop_at_eos", False, "fixed length 53, then truncate at the first EOS", "§1 sampling; §2 D2"),
        _s("lr", 3e-6, "`lr` 3e-6", "§1 policy lr"),
        _s("critic_lr", 3e-6, "one AdamW over policy and critic at `lr`", "nplus-code `PolicyAndValueWrapper`",
           "tether has one optimizer per model; both get the same rate"),
        _s("lr_schedule", "linear", "linear anneal to 0", "§1 policy lr; §2 J2"),
        _s("warmup_updates", 0, "`warm_up_steps` 0", "nplus-code `Args`"),
        _s("adam_eps", 1e-5, "AdamW `eps` 1e-5", "§1 optimizer"),
        _s("weight_decay", 0.01, "`optim.AdamW(lr=, eps=)`: torch's default weight decay 0.01",
           "nplus-code optimizer", "§1 is silent; the code passes no weight decay, so torch's default applies"),
        _s("max_grad_norm", None, "no gradient clipping configured", "§1 grad clipping"),
        _s("critic_warmup_updates", 0, "none (policy and critic train from the first update)", "nplus-code"),
        _s("target_kl", None, "none (early stop on KL is CleanRL's)", "§2 H5"),
        _s("advantage", "gae", "PPO with a critic and GAE", "§2 G3"),
        _s("clip_eps", 0.2, "`cliprange` 0.2", "§1 clip ε"),
        _s("clip_eps_high", None, "symmetric clip", "§2 H1"),
        _s("dual_clip", None, "none", "§2 H1"),
        _s("value_clip", 0.2, "`cliprange_value` 0.2", "§1 value clip ε_v"),
        _s("vf_coef", 0.1, "`vf_coef` 0.1", "§1 vf_coef"),
        _s("entropy_coef", 0.0, "no entropy bonus", "§1 entropy bonus"),
        _s("gamma", 1.0, "`gamma` 1", "§1 γ, λ"),
        _s("lam", 0.95, "`lam` 0.95", "§1 γ, λ"),
        _s("whiten_advantages", True, "masked whitening over the whole batch per rank", "§1 advantage whitening"),
        _s("loss_aggregation", "token_mean", "`masked_mean` over the micro-batch", "§2 I3, I4",
           "N+ averages per micro-batch, then accelerate averages the micro-batches; tether's token mean is over "
           "the whole minibatch (the same when a minibatch is one micro-batch)"),
        _s("kl_coef", 0.05, "`kl_coef` 0.05", "§1 KL coef β"),
        _s("kl_controller", "fixed", "fixed β", "§1 KL coef β"),
        _s("kl_estimator", "k1", "k1 in the reward", "§1 KL estimator in reward"),
        _s("kl_in", "reward", "per-token KL penalty in the reward", "§1 KL estimator in reward"),
        _s("kl_log_ratio_clamp", None, "no clamp", "nplus-code"),
        _s("score_placement", "eos+1", "score at the slot after EOS (`actual_end = sequence_lengths + 1`)",
           "§2 F1"),
        _s("missing_eos_penalty", 1.0, "`penalty_reward_value` −1 for responses without EOS", "§1 missing-EOS"),
        _s("missing_eos_mode", "replace", "score := −1", "§1 missing-EOS; §2 D3",
           "`replace` sets the score to −missing_eos_penalty = −1"),
        _s("score_clip", None, "no score clipping", "§1 reward whitening"),
        _s("whiten_rewards", False, "`whiten_rewards` False in the released script", "§1 reward whitening"),
    ),
    (
        NotMapped("`total_episodes` 1,000,000 (≈1953 updates)", _NOT_RUN_LENGTH, "§1 total episodes"),
        NotMapped("`local_micro_batch_size` 1", _MICRO, "nplus-code `Args`"),
        NotMapped("`seed` 1", _SEED, "nplus-code `Args`"),
        NotMapped("dropout disabled everywhere", _DROPOUT, "§1 dropout"),
        NotMapped("critic initialised from the RM, with the RM's normalisation bias", "tether initialises the "
                  "critic from the reward model when it shares the policy's tokenizer (else from the policy), with "
                  "a fresh value head; set `critic=DIR` to choose", "§2 G1", "critic"),
    ),
)

_LMHP = Preset(
    "lmhp", "lm-human-preferences (Ziegler et al. 2019)",
    "OpenAI's original RLHF code (GPT-2), with its books/sentiment launch settings (the §1 lm-human-preferences "
    "column); the summarisation tasks used β 0.03 (TL;DR) or 0.01 (CNN/DM), lr 2e-6 and 32 episodes per batch.",
    (
        _s("critic_mode", "shared", "value head on the policy's trunk, head initialised to zeros",
           "§1 critic init; §2 G1", "tether's shared value head also starts at zero"),
        _s("rollout_batch_size", 512, "`ppo.batch_size` 512 (books)", "§1 episodes per PPO batch"),
        _s("samples_per_prompt", 1, "one response per query", "lmhp-code `PPOTrainer.step`"),
        _s("num_minibatches", 1, "`nminibatches` 1", "§1 PPO epochs / minibatches"),
        _s("num_ppo_epochs", 4, "`noptepochs` 4", "§1 PPO epochs / minibatches"),
        _s("response_length", 24, "`task.response_length` 24", "§0 R; §1 sampling"),
        _s("temperature", 0.7, "temperature 0.7 (books, TL;DR)", "§1 sampling"),
        _s("stop_at_eos", False, "fixed length 24, then truncate", "§1 sampling",
           "lm-human-preferences truncates after a period token; tether truncates at EOS"),
        _s("lr", 1e-5, "`ppo.lr` 1e-5 (books)", "§1 policy lr"),
        _s("critic_lr", 1e-5, "one Adam over the shared trunk and its value head", "lmhp-code `minimize`",
           "with `critic_mode: shared` the value head trains at critic_lr, the trunk at lr"),
        _s("lr_schedule", "linear", "`lrnow = lr × (1 − policy_frac)`, annealed to 0", "§1 policy lr; §2 J2"),
        _s("warmup_updates", 0, "no warm-up", "lmhp-code `train_minibatch`"),
        _s("adam_eps", 1e-5, "TF1 `AdamOptimizer(epsilon=1e-5)`", "lmhp-code `minimize`; §2 J1",
           "TF1's epsilon is ε-hat (outside the bias correction); PyTorch's AdamW with the same ε steps harder "
           "early on"),
        _s("weight_decay", 0.0, "Adam, no weight decay", "lmhp-code `minimize`"),
        _s("max_grad_norm", None, "no gradient clipping", "lmhp-code `minimize`"),
        _s("critic_warmup_updates", 0, "none", "lmhp-code"),
        _s("target_kl", None, "none", "lmhp-code"),
        _s("advantage", "gae", "GAE with the value head", "lmhp-code `PPOTrainer.loss`"),
        _s("clip_eps", 0.2, "`cliprange` 0.2", "§1 clip ε"),
        _s("clip_eps_high", None, "symmetric clip", "lmhp-code `PPOTrainer.loss`"),
        _s("dual_clip", None, "none", "lmhp-code `PPOTrainer.loss`"),
        _s("value_clip", 0.2, "`cliprange_value` 0.2", "§1 value clip ε_v"),
        _s("vf_coef", 0.1, "`vf_coef` 0.1", "§1 vf_coef"),
        _s("entropy_coef", 0.0, "no entropy bonus", "§1 entropy bonus"),
        _s("gamma", 1.0, "`gamma` 1", "§1 γ, λ"),
        _s("lam", 0.95, "`lam` 0.95", "§1 γ, λ"),
        _s("whiten_advantages", True, "`utils.whiten(advantages)` per minibatch", "§1 advantage whitening",
           "tether whitens over the rollout batch: the same with one minibatch"),
        _s("loss_aggregation", "token_mean", "`reduce_mean` over every (fixed-length) token", "lmhp-code "
           "`PPOTrainer.loss`", "all rows have 24 tokens there, so token mean and sequence mean agree"),
        _s("kl_coef", 0.15, "`rewards.kl_coef` 0.15 (books)", "§1 KL coef β"),
        _s("kl_controller", "adaptive", "`adaptive_kl` (books)", "§1 KL coef β; §2 F3"),
        _s("kl_target", 6.0, "`adaptive_kl.target` 6", "§1 KL coef β; §2 F3"),
        _s("kl_horizon", 10000.0, "`adaptive_kl.horizon` 10000 episodes", "§1 KL coef β; §2 F3"),
        _s("kl_estimator", "k1", "`kl = logprobs − ref_logprobs`", "§1 KL estimator in reward"),
        _s("kl_in", "reward", "`non_score_reward = −β·kl` in the reward", "lmhp-code `compute_rewards`"),
        _s("kl_log_ratio_clamp", None, "no clamp", "lmhp-code `compute_rewards`"),
        _s("score_placement", "eos", "`rewards[:, -1] += scores` (last of the 24 tokens)", "§2 F1",
           "tether adds the score at the last real token of the truncated completion (the last column when it "
           "has no EOS)"),
        _s("missing_eos_penalty", None, "no EOS penalty (a −1 score rule for a missing period instead; see below)",
           "§1 missing-EOS"),
        _s("score_clip", None, "no score clipping", "lmhp-code"),
        _s("whiten_rewards", True, "`whiten_rewards` True", "§1 reward whitening; §2 F4",
           "its launch config turns it off for the summarisation tasks"),
    ),
    (
        NotMapped("`total_episodes` 1,000,000 (books)", _NOT_RUN_LENGTH, "§1 total episodes"),
        NotMapped("`query_length` 64 (books)", "tether does not pad or cut prompts to a fixed length; prompts "
                  "longer than `max_prompt_length` keep their last tokens", "lmhp-code `TaskHParams`",
                  "max_prompt_length"),
        NotMapped("score := −1 when no period appears in tokens 16–24", "a rule on the text, not on EOS: write it "
                  "into a Python reward (`reward_fn=FILE.py:fn`)", "§1 missing-EOS"),
        NotMapped("TF1 Adam (ε-hat)", "tether uses PyTorch AdamW; no TF-style Adam", "§2 J1"),
        NotMapped("dropout disabled for the policy", _DROPOUT, "§1 dropout"),
    ),
)

_TRL = Preset(
    "trl", "TRL PPOTrainer (0.11–0.29)",
    "Hugging Face TRL's PPOTrainer (`PPOv2Trainer` in 0.11, `PPOTrainer` from 0.12, under `trl.experimental` from "
    "0.26), on one GPU with `transformers.TrainingArguments`' defaults where TRL sets none. TRL 0.11–0.28 default "
    "`learning_rate` to TrainingArguments' 5e-5; 0.29 sets 3e-6 (the N+ value), which this preset uses.",
    (
        _s("critic_mode", "separate", "a separate `value_model`", "trl `PPOTrainer.__init__`"),
        _s("rollout_batch_size", 8, "`per_device_train_batch_size` 8 × `gradient_accumulation_steps` 1 × GPUs",
           "trl `PPOTrainer.__init__` (`args.batch_size`)", "on one GPU; TRL's rollout grows with the GPU count"),
        _s("samples_per_prompt", 1, "one response per query", "trl `PPOTrainer.train`"),
        _s("num_minibatches", 1, "`num_mini_batches` 1", "trl `PPOConfig`"),
        _s("num_ppo_epochs", 4, "`num_ppo_epochs` 4", "trl `PPOConfig`"),
        _s("response_length", 53, "`response_length` 53", "trl `PPOConfig`"),
        _s("temperature", 0.7, "`temperature` 0.7", "trl `PPOConfig`"),
        _s("stop_at_eos", False, "`stop_token` None: always 53 tokens", "trl `PPOConfig`, `PPOTrainer.train`",
           "with `stop_token=None` TRL neither stops nor truncates at EOS; tether always truncates at the first "
           "EOS (as TRL with `stop_token='eos'`, which its example scripts set)"),
        _s("lr", 3e-6, "`learning_rate` 3e-6 (0.29; 5e-5 in 0.11–0.28)", "trl `PPOConfig`"),
        _s("critic_lr", 3e-6, "one optimizer over policy and value model at `learning_rate`",
           "trl `PolicyAndValueWrapper`", "tether has one optimizer per model; both get the same rate"),
        _s("lr_schedule", "linear", "`lr_scheduler_type` linear, stepped once per update",
           "trl `PPOTrainer.__init__`; TrainingArguments"),
        _s("warmup_updates", 0, "`warmup_steps` 0", "TrainingArguments"),
        _s("adam_eps", 1e-8, "`adam_epsilon` 1e-8", "TrainingArguments"),
        _s("weight_decay", 0.0, "`weight_decay` 0.0", "TrainingArguments"),
        _s("max_grad_norm", None, "no clipping (PPOTrainer's own loop ignores TrainingArguments' `max_grad_norm`)",
           "trl `PPOTrainer.train`"),
        _s("critic_warmup_updates", 0, "none", "trl `PPOTrainer.train`"),
        _s("target_kl", None, "none", "trl `PPOConfig`"),
        _s("advantage", "gae", "GAE with the value model", "trl `PPOTrainer.train`"),
        _s("clip_eps", 0.2, "`cliprange` 0.2", "trl `PPOConfig`"),
        _s("clip_eps_high", None, "symmetric clip", "trl `PPOTrainer.train`"),
        _s("dual_clip", None, "none", "trl `PPOTrainer.train`"),
        _s("value_clip", 0.2, "`cliprange_value` 0.2", "trl `PPOConfig`"),
        _s("vf_coef", 0.1, "`vf_coef` 0.1", "trl `PPOConfig`"),
        _s("entropy_coef", 0.0, "no entropy bonus", "trl `PPOTrainer.train`"),
        _s("gamma", 1.0, "`gamma` 1.0", "trl `PPOConfig`"),
        _s("lam", 0.95, "`lam` 0.95", "trl `PPOConfig`"),
        _s("whiten_advantages", True, "`masked_whiten(advantages, ~padding_mask)`", "trl `PPOTrainer.train`"),
        _s("loss_aggregation", "token_mean", "`masked_mean` over each micro-batch", "trl `PPOTrainer.train`",
           "tether's token mean is over the whole minibatch (the same when a minibatch is one micro-batch)"),
        _s("kl_coef", 0.05, "`kl_coef` 0.05", "trl `PPOConfig`"),
        _s("kl_controller", "fixed", "fixed β", "trl `PPOTrainer.train`"),
        _s("kl_estimator", "k1", "`kl_estimator` k1", "trl `PPOConfig`"),
        _s("kl_in", "reward", "`non_score_reward = −kl_coef·kl` in the reward", "trl `PPOTrainer.train`"),
        _s("kl_log_ratio_clamp", None, "no clamp", "trl `PPOTrainer.train`"),
        _s("score_placement", "eos+1", "`actual_end = sequence_lengths + 1`", "trl `PPOTrainer.train`; §2 F1"),
        _s("missing_eos_penalty", None, "`missing_eos_penalty` None", "trl `PPOConfig`"),
        _s("missing_eos_mode", "subtract", "`scores[~contain_eos_token] -= missing_eos_penalty`",
           "trl `PPOTrainer.train`"),
        _s("score_clip", None, "no score clipping", "trl `PPOTrainer.train`"),
        _s("whiten_rewards", False, "`whiten_rewards` False", "trl `PPOConfig`"),
    ),
    (
        NotMapped("`total_episodes` None (= `num_train_epochs` × the dataset)", _NOT_RUN_LENGTH, "trl `PPOConfig`"),
        NotMapped("`per_device_train_batch_size` 8 as the micro-batch", _MICRO, "TrainingArguments"),
        NotMapped("`local_rollout_forward_batch_size` 64", "a memory knob of the no-grad rollout forwards",
                  "trl `PPOConfig`"),
        NotMapped("`seed` 42", _SEED, "TrainingArguments"),
        NotMapped("prompt length: whatever the dataset holds", "TRL's PPOTrainer does not cut prompts; tether keeps "
                  "the last `max_prompt_length` tokens", "trl `PPOTrainer.train`", "max_prompt_length"),
        NotMapped("dropout disabled in every model", _DROPOUT, "trl `PPOTrainer.__init__`"),
        NotMapped("`num_sample_generations` 10", "logging only: tether writes sample completions every "
                  "`sample_every` updates", "trl `PPOConfig`"),
    ),
)

_OPENRLHF = Preset(
    "openrlhf", "OpenRLHF PPO (v0.11.0)",
    "OpenRLHF's `train_ppo_ray.py` with its defaults (`--algo.advantage.estimator gae`).",
    (
        _s("critic_mode", "separate", "a separate critic model (`--critic.model_name_or_path`)", "openrlhf cli"),
        _s("rollout_batch_size", 1024, "`--rollout.batch_size` 1024", "openrlhf cli"),
        _s("samples_per_prompt", 1, "`--rollout.n_samples_per_prompt` 1", "openrlhf cli"),
        _s("num_minibatches", 8, "`--train.batch_size` 128 (global, in samples)", "openrlhf cli",
           "1024 prompts × 1 sample / 128 samples per optimizer step = 8 minibatches"),
        _s("num_ppo_epochs", 1, "`--train.max_epochs` 1", "openrlhf cli"),
        _s("temperature", 1.0, "`--rollout.temperature` 1.0 (`--rollout.top_p` 1.0)", "openrlhf cli"),
        _s("stop_at_eos", True, "generation stops at EOS (vLLM)", "openrlhf cli"),
        _s("lr", 1e-6, "`--actor.adam.lr` 1e-6", "openrlhf cli"),
        _s("critic_lr", 9e-6, "`--critic.adam.lr` 9e-6", "openrlhf cli"),
        _s("lr_schedule", "cosine", "`--actor.lr_scheduler` cosine_with_min_lr", "openrlhf cli",
           "tether's cosine ends at 0, OpenRLHF's at `min_lr_ratio` 0.1 × lr (see below)"),
        _s("adam_eps", 1e-8, "`--actor.adam.eps` 1e-8", "openrlhf cli"),
        _s("weight_decay", 0.0, "`--actor.adam.weight_decay` 0.0", "openrlhf cli"),
        _s("max_grad_norm", 1.0, "`--actor.max_norm` 1.0", "openrlhf cli"),
        _s("critic_warmup_updates", 0, "`--critic.freezing_steps` −1 (off)", "openrlhf cli"),
        _s("target_kl", None, "none", "openrlhf cli"),
        _s("advantage", "gae", "`--algo.advantage.estimator` gae", "openrlhf cli"),
        _s("clip_eps", 0.2, "`--actor.eps_clip` 0.2", "openrlhf cli"),
        _s("clip_eps_high", None, "`--actor.eps_clip_low_high` None (symmetric)", "openrlhf cli"),
        _s("dual_clip", None, "`--actor.dual_clip` None", "openrlhf cli"),
        _s("value_clip", 0.5, "`--critic.value_clip` 0.5", "openrlhf cli"),
        _s("vf_coef", 1.0, "critic loss `0.5·max((v−R)², (v_clip−R)²)` with weight 1, own optimizer",
           "openrlhf `ValueLoss`, `ppo_critic.py`",
           "tether's value loss has the same ½; with a separate critic vf_coef only scales the critic's loss"),
        _s("entropy_coef", 0.0, "`--actor.entropy_coef` None (off)", "openrlhf cli"),
        _s("gamma", 1.0, "`--algo.advantage.gamma` 1", "openrlhf cli"),
        _s("lam", 1.0, "`--algo.advantage.lambd` 1", "openrlhf cli"),
        _s("whiten_advantages", True, "GAE advantages normalised over the whole batch (masked mean and std)",
           "openrlhf `experience_maker.py`"),
        _s("loss_aggregation", "token_mean", "`token_level_loss` True: masked sum / global token count",
           "openrlhf `models/loss.py`"),
        _s("kl_coef", 0.01, "`--algo.kl.init_coef` 0.01", "openrlhf cli"),
        _s("kl_controller", "fixed", "`--algo.kl.target` None: fixed controller", "openrlhf cli"),
        _s("kl_estimator", "k1", "`--algo.kl.estimator` k1", "openrlhf cli"),
        _s("kl_in", "reward", "`--algo.kl.use_loss` False: KL in the reward", "openrlhf cli"),
        _s("kl_log_ratio_clamp", None, "no clamp for k1", "openrlhf `experience_maker.py`"),
        _s("score_placement", "eos", "reward added at the last action token (the EOS)", "openrlhf "
           "`compute_reward`"),
        _s("missing_eos_penalty", None, "`--reward.stop_properly_penalty_coef` None", "openrlhf cli"),
        _s("score_clip", 10.0, "`--reward.clip_range` (−10, 10)", "openrlhf cli"),
        _s("whiten_rewards", False, "no per-token reward whitening", "openrlhf `experience_maker.py`"),
    ),
    (
        NotMapped("`--train.num_episodes` 1 (passes over the prompts)", _NOT_RUN_LENGTH, "openrlhf cli"),
        NotMapped("`--rollout.max_new_tokens` None (= `--data.max_len` 2048 − prompt length)", "tether needs a "
                  "fixed maximum; `response_length` stays tether's (32) unless you set it", "openrlhf cli",
                  "response_length"),
        NotMapped("`--actor.lr_warmup_ratio` 0.03 (of the training steps)", "tether's warm-up counts updates: set "
                  "`warmup_updates` ≈ 0.03 × num_updates yourself", "openrlhf cli", "warmup_updates"),
        NotMapped("`--actor.min_lr_ratio` 0.1", "tether's cosine anneals to 0", "openrlhf cli"),
        NotMapped("`--actor.adam.betas` (0.9, 0.95)", "tether's AdamW uses (0.9, 0.999)", "openrlhf cli"),
        NotMapped("`--reward.normalize_enable` False (running reward normalisation)", "off there too; tether's "
                  "per-source `normalize: batch` is a different (per-batch) normalisation", "openrlhf cli"),
        NotMapped("`--train.micro_batch_size` 1, `--rollout.micro_batch_size` 1", _MICRO, "openrlhf cli"),
        NotMapped("`--train.seed` 42", _SEED, "openrlhf cli"),
        NotMapped("`--algo.advantage.is_correction_enable` False (vLLM importance-sampling correction)", "off there "
                  "too; tether samples with the model it trains, so there is no engine mismatch to correct",
                  "openrlhf cli"),
        NotMapped("`--data.max_len` 2048 (prompt + response)", "tether bounds prompt and response separately "
                  "(`max_prompt_length`, `response_length`)", "openrlhf cli", "max_prompt_length"),
    ),
)

_VERL_COMMON_NOT_MAPPED = (
    NotMapped("`trainer.total_epochs` 30", _NOT_RUN_LENGTH, "verl"),
    NotMapped("`actor.optim.betas` (0.9, 0.999)", "the same as tether's AdamW", "verl"),
    NotMapped("`ppo_micro_batch_size_per_gpu` null (must be set)", _MICRO, "verl"),
    NotMapped("`data.seed` null, `data_loader_seed` 42", _SEED, "verl"),
    NotMapped("`rollout.top_k` −1, `rollout.top_p` 1", "off there too: " + _PURE, "verl"),
    NotMapped("`actor.shuffle` false", "tether splits each rollout into minibatches in a seeded random order",
              "verl"),
)


def _verl_common(kl: tuple[Setting, ...]) -> tuple[Setting, ...]:
    return (
        _s("rollout_batch_size", 1024, "`data.train_batch_size` 1024 prompts", "verl"),
        _s("num_ppo_epochs", 1, "`actor.ppo_epochs` 1", "verl"),
        _s("response_length", 512, "`data.max_response_length` 512", "verl"),
        _s("max_prompt_length", 512, "`data.max_prompt_length` 512", "verl"),
        _s("prompt_truncation", "error", "`data.truncation` error", "verl"),
        _s("temperature", 1.0, "`rollout.temperature` 1.0", "verl"),
        _s("stop_at_eos", True, "`rollout.ignore_eos` false", "verl"),
        _s("lr", 1e-6, "`actor.optim.lr` 1e-6", "verl"),
        _s("lr_schedule", "constant", "`actor.optim.lr_scheduler_type` constant", "verl"),
        _s("warmup_updates", 0, "`actor.optim.lr_warmup_steps_ratio` 0.0", "verl"),
        _s("adam_eps", 1e-8, "torch AdamW's default eps (the config sets none)", "verl"),
        _s("weight_decay", 0.01, "`actor.optim.weight_decay` 0.01", "verl"),
        _s("max_grad_norm", 1.0, "`actor.optim.clip_grad` 1.0", "verl"),
        _s("target_kl", None, "none", "verl"),
        _s("clip_eps", 0.2, "`actor.clip_ratio` 0.2 (`clip_ratio_low` 0.2)", "verl"),
        _s("clip_eps_high", None, "`actor.clip_ratio_high` 0.2 (= the low side)", "verl"),
        _s("dual_clip", 3.0, "`actor.clip_ratio_c` 3.0 (dual-clip, on by default)", "verl"),
        _s("entropy_coef", 0.0, "`actor.entropy_coeff` 0", "verl"),
        _s("gamma", 1.0, "`algorithm.gamma` 1.0", "verl"),
        _s("loss_aggregation", "token_mean", "`actor.loss_agg_mode` token-mean", "verl"),
        *kl,
        _s("kl_controller", "fixed", "`algorithm.kl_ctrl.type` fixed", "verl"),
        _s("score_placement", "eos", "the score at the last valid response token", "verl `core_algos.py`"),
        _s("missing_eos_penalty", None, "none", "verl"),
        _s("score_clip", None, "none", "verl"),
    )


_VERL_PPO = Preset(
    "verl_ppo", "veRL PPO (v0.7.0)",
    "veRL's `ppo_trainer.yaml` defaults (`algorithm.adv_estimator: gae`). Its defaults apply no KL at all: "
    "`algorithm.use_kl_in_reward` and `actor.use_kl_loss` are both false.",
    (
        _s("critic_mode", "separate", "a separate critic (`critic.model`)", "verl"),
        _s("samples_per_prompt", 1, "`rollout.n` 1", "verl"),
        _s("num_minibatches", 4, "`actor.ppo_mini_batch_size` 256 prompts", "verl",
           "1024 / 256 = 4 minibatches (veRL's mini-batch counts prompts, each with its `rollout.n` responses)"),
        *_verl_common((
            _s("kl_coef", 0.0, "no KL: `algorithm.use_kl_in_reward` false, `actor.use_kl_loss` false", "verl",
               "`algorithm.kl_ctrl.kl_coef` 0.001 only applies once use_kl_in_reward is turned on"),
            _s("kl_estimator", "k1", "`algorithm.kl_penalty` kl", "verl"),
            _s("kl_in", "reward", "`algorithm.use_kl_in_reward` (off)", "verl"),
            _s("kl_log_ratio_clamp", None, "no clamp for `kl`", "verl `core_algos.py` `kl_penalty`"),
        )),
        _s("critic_lr", 1e-5, "`critic.optim.lr` 1e-5", "verl"),
        _s("critic_warmup_updates", 0, "`trainer.critic_warmup` 0", "verl"),
        _s("advantage", "gae", "`algorithm.adv_estimator` gae", "verl"),
        _s("value_clip", 0.5, "`critic.cliprange_value` 0.5", "verl"),
        _s("vf_coef", 1.0, "critic loss `0.5·agg_loss(max(...))` with weight 1, own optimizer",
           "verl `core_algos.py` `compute_value_loss`",
           "tether's value loss has the same ½; with a separate critic vf_coef only scales the critic's loss"),
        _s("lam", 1.0, "`algorithm.lam` 1.0", "verl"),
        _s("whiten_advantages", True, "`masked_whiten(advantages, response_mask)` in GAE", "verl `core_algos.py`"),
        _s("whiten_rewards", False, "no per-token reward whitening", "verl `core_algos.py`"),
    ),
    (*_VERL_COMMON_NOT_MAPPED,
     NotMapped("`critic.optim.weight_decay` 0.01, `critic.optim.clip_grad` 1.0", "the same as the actor's here; "
               "tether's `weight_decay` and `max_grad_norm` apply to both models", "verl")),
)

_VERL_GRPO = Preset(
    "verl_grpo", "veRL GRPO (v0.7.0)",
    "veRL's `ppo_trainer.yaml` defaults with the changes its GRPO doc asks for (`adv_estimator: grpo`, "
    "`rollout.n` > 1 — 5 in its example —, `use_kl_loss: true`, `kl_loss_type: low_var_kl`).",
    (
        _s("samples_per_prompt", 5, "`rollout.n` 5", "verl-grpo example", "the doc asks for n > 1"),
        _s("num_minibatches", 4, "`actor.ppo_mini_batch_size` 256 prompts", "verl",
           "1024 / 256 = 4 minibatches of 256 prompts × 5 responses"),
        *_verl_common((
            _s("kl_coef", 0.001, "`actor.kl_loss_coef` 0.001", "verl-grpo doc"),
            _s("kl_estimator", "k3", "`actor.kl_loss_type` low_var_kl (k3)", "verl-grpo doc"),
            _s("kl_in", "loss", "`actor.use_kl_loss` true (and `use_kl_in_reward` false)", "verl-grpo doc"),
            _s("kl_log_ratio_clamp", 20.0, "low_var_kl clamps the log-ratio to ±20", "verl `core_algos.py` "
               "`kl_penalty_forward`", "it also clamps the k3 value to ±10, which tether does not (see below)"),
        )),
        _s("advantage", "grpo", "`algorithm.adv_estimator` grpo with `norm_adv_by_std_in_grpo` true",
           "verl-grpo doc"),
        _s("grpo_std_eps", 1e-6, "`epsilon` 1e-6 in (r − mean)/(std + ε)", "verl `core_algos.py` "
           "`compute_grpo_outcome_advantage`"),
    ),
    (
        *_VERL_COMMON_NOT_MAPPED,
        NotMapped("low_var_kl clamps each token's k3 value to [−10, 10]", "tether clamps only the log-ratio "
                  "(`kl_log_ratio_clamp`), so the two differ on tokens whose k3 exceeds 10: π_ref/π above ≈ 13.6 or "
                  "below ≈ e^−11", "verl `core_algos.py` `kl_penalty_forward`"),
        NotMapped("critic settings", "GRPO trains no critic; tether's critic options keep their defaults (they "
                  "apply only if you set `advantage: gae`)", "verl-grpo doc"),
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (_NPLUS, _LMHP, _TRL, _OPENRLHF, _VERL_PPO, _VERL_GRPO)}
"""Every preset, by name."""
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

# ---------------------------------------------------------------------------------------------- which options

CORE: tuple[str, ...] = (
    "rollout_batch_size", "samples_per_prompt", "num_minibatches", "num_ppo_epochs", "response_length",
    "temperature", "stop_at_eos", "lr", "lr_schedule", "warmup_updates", "adam_eps", "weight_decay",
    "max_grad_norm", "target_kl", "advantage", "clip_eps", "clip_eps_high", "dual_clip", "entropy_coef", "gamma",
    "loss_aggregation", "kl_coef", "kl_controller", "kl_estimator", "kl_in", "kl_log_ratio_clamp",
    "score_placement", "missing_eos_penalty", "score_clip")
"""Options every preset accounts for (a value, or a "not mapped" row naming the option)."""
CRITIC: tuple[str, ...] = ("critic_mode", "critic_lr", "critic_warmup_updates", "value_clip", "vf_coef", "lam",
                           "whiten_advantages", "whiten_rewards")
"""Options a preset with a critic (``advantage: gae``) accounts for as well."""
GROUP_ONLY: dict[str, tuple[str, ...]] = {"grpo": ("grpo_std_eps",)}
ADAPTIVE: tuple[str, ...] = ("kl_target", "kl_horizon")
"""Options a preset with the adaptive KL controller accounts for as well."""


def accounted_options(preset: Preset) -> tuple[str, ...]:
    """The options ``preset`` must set or explain (:data:`CORE`, plus the critic's, the group estimator's and the
    adaptive controller's where they apply)."""
    v = preset.values()
    out = list(CORE)
    if v.get("advantage") == "gae":
        out += CRITIC
    out += GROUP_ONLY.get(v.get("advantage", ""), ())
    if v.get("kl_controller") == "adaptive":
        out += ADAPTIVE
    if v.get("missing_eos_penalty") is not None:
        out.append("missing_eos_mode")
    return tuple(out)


# ---------------------------------------------------------------------------------------------- applying one


def unknown_preset_message(name: Any) -> str:
    """The one-line refusal of an unknown preset, with "did you mean" and the list."""
    key = str(name).lower().replace("-", "_")
    close = [key] if key in PRESETS else difflib.get_close_matches(key, PRESET_NAMES, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"preset: unknown preset {name!r}{hint} (presets: {', '.join(PRESET_NAMES)})"


def preset_values(name: str) -> dict[str, Any]:
    """``{option: value}`` of the preset ``name``; ``ValueError`` (one line) for an unknown name."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(unknown_preset_message(name))
    return PRESETS[name].values()


def expand_preset(data: Any) -> Any:
    """``data`` (a PPO mapping, before validation) with the preset's values for every option it does not set.

    The user's own keys are never touched, so an explicit value beats the preset wherever it was given."""
    if not isinstance(data, dict) or data.get("preset") is None:
        return data
    values = preset_values(data["preset"])
    out = dict(data)
    for key, value in values.items():
        out.setdefault(key, value)
    return out


# ---------------------------------------------------------------------------------------------- the docs


TABLES_BEGIN = "<!-- preset tables: generated by tether.config.presets.presets_markdown(); a test checks it -->"
TABLES_END = "<!-- end of preset tables -->"


def _fmt(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def presets_markdown() -> str:
    """The Markdown of docs/presets.md between the markers: per preset, its values and what is not mapped."""
    out: list[str] = []
    for p in PRESETS.values():
        out += [f"### `{p.name}`: {p.title}", "", p.about, "",
                "| tether option | value | their name (their value) | source | note |",
                "| --- | --- | --- | --- | --- |"]
        out += [f"| `{s.field}` | {_fmt(s.value)} | {_cell(s.theirs)} | {_cell(s.source)} | {_cell(s.note)} |"
                for s in p.settings]
        out += ["", "Not mapped:", "", "| their setting | why, and what tether does | source |", "| --- | --- | --- |"]
        out += [f"| {_cell(n.theirs)} | {_cell(n.why)}{f' (`{n.field}` keeps its default)' if n.field else ''} | "
                f"{_cell(n.source)} |" for n in p.not_mapped]
        out.append("")
    out += ["### Sources", ""]
    out += [f"- **{key}**: {text}" for key, text in SOURCES.items()]
    return "\n".join(out)
