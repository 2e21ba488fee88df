"""The option names Hugging Face ``Trainer``/TRL users bring, mapped onto tether's options — or refused with the fix
where the meaning differs.

An alias is resolved on the user's mapping (YAML file plus command-line overrides) *before* validation, at every
nesting level (``ppo.learning_rate`` in a pipeline is ``ppo.lr``), so a config is still built and validated once and
is saved under tether's own names. The Python API takes tether's names only. The semantics were checked against TRL
0.29.1 (``PPOConfig``/``GRPOConfig``/``SFTConfig``/``RewardConfig``, all ``TrainingArguments``): where TRL's number
means something else (its batch sizes are per device and tie the rollout batch to the micro-batch), the alias refuses
with one line saying which tether options to set and to what. ``docs/cli.md`` carries the table
(:func:`migration_table`, checked by a test). ``tether dpo`` takes the step-counted stages' ``Trainer`` names and
the names of TRL's ``DPOConfig`` options it has (``beta``, ``loss_type``, ``label_smoothing``, ``max_length``,
``max_prompt_length``, ``precompute_ref_log_probs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from tether.config.base import Section, _deepcopy, apply_overrides, build, nested_section, read_yaml
from tether.errors import ConfigError


@dataclass(frozen=True)
class Alias:
    """One foreign name: the tether option it sets, or why it is refused."""

    name: str
    """The name as TRL / ``TrainingArguments`` spell it."""
    target: Optional[str]
    """tether's option (a field, or a shortcut of ``tether.config.shortcuts``); None when refused."""
    note: str
    """What the foreign option means and how tether's relates (the migration table's last column)."""
    also: tuple[str, ...] = ()
    """More options set to the same value unless given (TRL's one learning rate drives policy and critic)."""
    refuse: Optional[str] = None
    """Why it is refused and what to set instead (the error message and the table)."""
    hint: Optional[Callable[[dict[str, Any]], str]] = None
    """The values to set, computed from the mapping at the alias's level (appended to the refusal)."""
    convert: Optional[Callable[[Any], Any]] = None
    """Maps the value (``bf16: true`` → ``autocast: bfloat16``)."""
    flag: bool = False
    """A boolean: ``--name`` alone means true, ``--no-name`` false."""


def _int(data: dict[str, Any], key: str, default: int) -> int:
    v = data.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


def _ppo_batch(data: dict[str, Any]) -> str:
    p = _int(data, "per_device_train_batch_size", 1)
    g = _int(data, "gradient_accumulation_steps", 1)
    return f"micro_batch_size={p} rollout_batch_size={p * g} (on one GPU; TRL multiplies the rollout by the GPU count)"


_PPO_BATCH = ("TRL ties the rollout to the per-device micro-batch (rollout = per_device_train_batch_size × "
              "gradient_accumulation_steps × GPUs prompts); tether sets them apart: micro_batch_size = the per-device "
              "batch, rollout_batch_size = their product")


def _bf16(v: Any) -> Any:
    if isinstance(v, bool):
        return "bfloat16" if v else "none"
    return v  # not a boolean: validation of autocast names the problem


_STEP = (  # SFT and reward model: optimizer steps on one process, as in transformers' Trainer
    Alias("learning_rate", "lr", "peak learning rate of AdamW (same)"),
    Alias("per_device_train_batch_size", "batch_size",
          "sequences (SFT) or pairs (reward model) per forward/backward; tether runs one process, so per device = "
          "per step"),
    Alias("gradient_accumulation_steps", "grad_accum", "micro-batches per optimizer step (same)"),
    Alias("num_train_epochs", "num_epochs", "passes over the training data; tether takes whole epochs only"),
    Alias("model_name_or_path", "model", "the model directory (tether reads local directories)"),
    Alias("adam_epsilon", "adam_eps", "AdamW epsilon (same)"),
    Alias("lr_scheduler_type", "lr_schedule", "`constant`, `linear` or `cosine` (the others are refused)"),
    Alias("logging_steps", "log_every", "optimizer steps between metric records (same)"),
    Alias("eval_steps", "eval_every", "optimizer steps between evaluations (same)"),
    Alias("save_steps", "checkpoint_every", "optimizer steps between checkpoints (same)"),
    Alias("save_total_limit", "keep_checkpoints", "checkpoints kept on disk (same)"),
    Alias("per_device_eval_batch_size", "eval_batch_size", "batch size of the evaluation (one process)"),
    Alias("bf16", "dtype", "bf16 autocast with float32 master weights and optimizer state, as transformers' bf16 "
          "(true → dtype=bfloat16)", convert=lambda v: ("bfloat16" if v else "float32") if isinstance(v, bool) else v,
          flag=True),
)
_DPO = (*_STEP, Alias("precompute_ref_log_probs", "precompute_ref_logprobs", "score every pair with the reference "
                                                                                "once, before training (same)",
                        flag=True))
_PPO = (
    Alias("learning_rate", "lr", "TRL's PPO trains policy and value model with one optimizer at this rate; tether "
          "has two, so the alias sets both unless critic_lr is given", also=("critic_lr",)),
    Alias("per_device_train_batch_size", None, "TRL: micro-batch per device, and a factor of the rollout",
          refuse=_PPO_BATCH, hint=_ppo_batch),
    Alias("gradient_accumulation_steps", None, "TRL: a factor of the rollout; tether's PPO accumulates over each "
          "minibatch by itself", refuse=_PPO_BATCH, hint=_ppo_batch),
    Alias("num_train_epochs", None, "TRL: passes over the prompt set (total_episodes = epochs × prompts)",
          refuse="tether counts updates: set num_updates (one rollout of rollout_batch_size prompts each) or "
                 "total_episodes=N (num_updates = ⌈N / rollout_batch_size⌉)"),
    Alias("max_steps", None, "TRL's PPOTrainer ignores it (it runs ⌈total_episodes / batch⌉ updates); GRPO counts "
          "optimizer steps", refuse="tether's PPO counts updates: set num_updates (one rollout, then num_ppo_epochs "
                                    "passes over it) or total_episodes"),
    Alias("cliprange", "clip_eps", "PPO ratio clip ε (same)"),
    Alias("epsilon", "clip_eps", "GRPO's ratio clip ε (same)"),
    Alias("epsilon_high", "clip_eps_high", "upper clip ε, DAPO's clip-higher (same)"),
    Alias("cliprange_value", "value_clip", "value clip ε_v around the rollout's values, in reward units (same)"),
    Alias("num_mini_batches", "num_minibatches", "minibatches per epoch, one optimizer step each (same)"),
    Alias("num_iterations", "num_ppo_epochs", "GRPO's μ: passes over each generation batch"),
    Alias("num_generations", "samples_per_prompt", "completions per prompt (GRPO's group size)"),
    Alias("beta", "kl_coef", "KL coefficient; TRL's GRPO puts a k3 KL in the loss: add kl_in=loss "
          "kl_estimator=k3 to match"),
    Alias("warmup_steps", "warmup_updates", "TRL's PPO steps its scheduler once per update, so its warm-up "
          "counts updates (transformers' ratio form, a value below 1, is refused: give whole updates)"),
    Alias("max_completion_length", "response_length", "GRPO: maximum new tokens per completion"),
    Alias("sft_model_path", "policy", "the policy to start from (its frozen copy is the reference)"),
    Alias("model_name_or_path", "policy", "the policy directory"),
    Alias("reward_model_path", "reward_model", "a reward-model directory (the `reward_model` shortcut)"),
    Alias("adam_epsilon", "adam_eps", "AdamW epsilon (same)"),
    Alias("lr_scheduler_type", "lr_schedule", "`constant`, `linear` or `cosine`; TRL's PPO anneals per update "
          "as tether does"),
    Alias("save_steps", "checkpoint_every", "TRL's PPO counts a step per update (same)"),
    Alias("save_total_limit", "keep_checkpoints", "checkpoints kept on disk (same)"),
    Alias("bf16", "autocast", "bf16 autocast with float32 weights, as transformers' bf16 (true → "
          "autocast=bfloat16)", convert=_bf16, flag=True),
)
SAME: dict[str, tuple[tuple[str, str], ...]] = {
    "ppo": (("num_ppo_epochs", "passes over each rollout"), ("vf_coef", "weight of ½·the clipped value loss (same "
            "½ as TRL)"), ("kl_coef", "initial β of the per-token KL penalty in the reward"),
            ("kl_estimator", "k1 (default) or k3; tether also has k2"), ("gamma", "discount"), ("lam", "GAE λ"),
            ("seed", "seed"), ("output_dir", "output directory"), ("response_length", "maximum new tokens "
            "(TRL's default is 53, tether's 32)"), ("temperature", "sampling temperature, also of the training "
            "log-probs"), ("missing_eos_penalty", "subtracted from the score of completions without EOS "
            "(missing_eos_mode=subtract, as TRL)"), ("whiten_rewards", "scale per-token rewards to unit variance "
            "keeping their mean (same)"), ("max_grad_norm", "clip the gradient norm; TRL's PPOTrainer does not clip "
            "at all, tether clips at 1.0 unless max_grad_norm=null"), ("max_prompt_length", "longest prompt in "
            "tokens"), ("weight_decay", "AdamW weight decay"),
            ("total_episodes", "a shortcut: num_updates = ⌈total_episodes / rollout_batch_size⌉ prompts, as TRL's "
             "num_total_batches")),
    "sft": (("max_steps", "optimizer steps, overriding the epochs"), ("warmup_steps", "optimizer steps of warm-up "
            "(transformers' ratio form, a value below 1, is refused)"),
            ("output_dir", "output directory"), ("seed", "seed"), ("max_grad_norm", "gradient clipping"),
            ("max_length", "longest sequence in tokens"), ("completion_only_loss", "loss on completions only"),
            ("packing", "pack examples into rows (no cross-attention between them)"),
            ("weight_decay", "AdamW weight decay")),
    "rm": (("max_steps", "optimizer steps, overriding the epochs"), ("warmup_steps", "optimizer steps of warm-up "
           "(transformers' ratio form, a value below 1, is refused)"),
           ("output_dir", "output directory"), ("seed", "seed"), ("max_grad_norm", "gradient clipping"),
           ("max_length", "longest prompt + completion in tokens"), ("weight_decay", "AdamW weight decay")),
    "dpo": (("beta", "DPO's β (same; with `loss_type: ipo` IPO's τ, as TRL)"),
            ("loss_type", "`sigmoid` (DPO) or `ipo`; TRL's other losses are not in tether"),
            ("label_smoothing", "conservative DPO's ε (same)"), ("max_length", "longest prompt + completion in "
            "tokens (same)"), ("max_prompt_length", "longest prompt in tokens (same)"),
            ("max_steps", "optimizer steps, overriding the epochs"), ("warmup_steps", "optimizer steps of warm-up "
            "(transformers' ratio form, a value below 1, is refused)"), ("output_dir", "output directory"),
            ("seed", "seed"), ("max_grad_norm", "gradient clipping"), ("weight_decay", "AdamW weight decay")),
}
"""TRL / ``TrainingArguments`` names tether uses as they are (fields, or the ``total_episodes`` shortcut); the
migration table lists them too."""


def _table() -> dict[str, tuple[Alias, ...]]:
    return {"SFTConfig": _STEP, "RMConfig": _STEP, "DPOConfig": _DPO, "PPOConfig": _PPO}


ALIASES: dict[str, dict[str, Alias]] = {cls: {a.name: a for a in items} for cls, items in _table().items()}
"""Config class name → foreign name → alias."""
C = TypeVar("C", bound=Section)


def aliases_of(cls: type) -> dict[str, Alias]:
    """The aliases a config class accepts (none for classes without any)."""
    return ALIASES.get(cls.__name__, {})


def resolve_aliases(cls: type[Section], data: dict[str, Any], where: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with every alias at every level replaced by tether's option, and ``{tether path: name given}`` for
    error messages. One-line ``ConfigError`` for a refused alias or an alias given together with its target."""
    out = _deepcopy(data)
    given: dict[str, str] = {}
    table = aliases_of(cls)
    for key in list(out):
        a = table.get(key) if isinstance(key, str) else None
        if a is None:
            continue
        path = f"{where}{key}"
        if a.refuse is not None:
            raise ConfigError(f"{path}: {a.refuse}" + (f"; here: {a.hint(out)}" if a.hint else ""))
        assert a.target is not None
        if a.target in out and a.target != key:
            raise ConfigError(f"{path} and {where}{a.target} are both set; {key} is the TRL name of {a.target}: "
                              "keep one")
        value = out.pop(key)
        value = a.convert(value) if a.convert else value
        out[a.target] = value
        given[f"{where}{a.target}"] = path
        for other in a.also:
            if other not in out:
                out[other] = value
                given[f"{where}{other}"] = path
    for key, value in out.items():
        sub = nested_section(cls, key) if isinstance(key, str) else None
        if sub is not None and isinstance(value, dict):
            out[key], more = resolve_aliases(sub, value, f"{where}{key}.")
            given.update(more)
    return out, given


# ------------------------------------------------------------------------------------------------ the docs' table

TABLE_BEGIN = "<!-- migration table: generated by tether.config.aliases.migration_table(); a test checks it -->"
TABLE_END = "<!-- end of migration table -->"


def _entry(command: str, name: str) -> tuple[str, str] | None:
    """(tether option column, meaning column) of ``name`` for one command, or None when it does not apply."""
    a = ALIASES[{"ppo": "PPOConfig", "sft": "SFTConfig", "rm": "RMConfig", "dpo": "DPOConfig"}[command]].get(name)
    if a is not None:
        if a.refuse:
            return f"refused: {a.refuse}", a.note
        return f"`{a.target}`" + "".join(f" (and `{o}`)" for o in a.also), a.note
    same = [note for n, note in SAME[command] if n == name]
    return (f"`{name}` (same name)", same[0]) if same else None


def migration_table() -> str:
    """The Markdown table of docs/cli.md: every TRL / Trainer name, per command, with tether's option."""
    rows = ["| TRL / Trainer name | command | tether option | meaning |", "| --- | --- | --- | --- |"]
    names = sorted({a.name for t in ALIASES.values() for a in t.values()} | {n for v in SAME.values() for n, _ in v})
    for name in names:
        entries = {cmd: _entry(cmd, name) for cmd in ("ppo", "sft", "rm", "dpo")}
        groups: dict[tuple[str, str], list[str]] = {}
        for cmd, e in entries.items():
            if e is not None:
                groups.setdefault(e, []).append(cmd)
        for (target, note), cmds in groups.items():
            rows.append(f"| `{name}` | {', '.join(cmds)} | {target} | {note} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ the CLI's loader


def extra_options(cls: type) -> dict[str, bool]:
    """The names a config class accepts besides its fields (aliases, the PPO shortcuts), each with whether it is a
    boolean flag."""
    from tether.config.shortcuts import SHORTCUTS

    out = {name: a.flag for name, a in aliases_of(cls).items()}
    if cls.__name__ == "PPOConfig":
        out.update({name: False for name in SHORTCUTS})
    return out


def load_user_config(cls: type[C], path: str | Path | None, overrides: list[str]) -> C:
    """The command line's config: YAML file, then ``key=value`` overrides, then the TRL aliases (at every level),
    validated once. Errors are one line; an unknown option gets "did you mean", an aliased one names what was
    typed."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    data, given = resolve_aliases(cls, data)
    return build(cls, data, given=given, extra_names=lambda c: list(extra_options(c)))
