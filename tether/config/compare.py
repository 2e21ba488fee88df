"""``CompareConfig`` (`tether compare`) and the method registry ``METHODS``.

`tether compare` trains several methods from one SFT model on one task, over several seeds, at a matched budget, then
evaluates them together (``tether.compare``). A method is a registry entry: the stage that trains it and the options
it sets on that stage's config (``METHODS``; docs/compare.md shows it as a table, which a test checks against it);
your own options per method (``method_options``) win over the registry's, and the shared ``ppo`` options apply to
every PPO-stage method.

The budget is matched by wiring, not by trust: every method gets the same ``completions_per_update`` (a group method
samples ``samples_per_prompt`` completions for each of ``completions_per_update / samples_per_prompt`` prompts), the
same ``response_length`` (shared ``ppo`` options only) and, for ``budget: tokens``, the same ``num_updates``; for
``budget: time`` the same ``time_limit_s`` (``num_updates`` is then the cap). Options that would break the match are
refused where you set them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional

from pydantic import Field, model_validator

from tether.config.base import OutputDir, Section, _deepcopy, build
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One entry of the registry: the stage that trains the method and the options it sets on that stage."""

    stage: Literal["ppo", "dpo"]
    """The trainer (``tether.compare.TRAINERS``) and the config it builds: ``ppo`` (``PPOConfig``, sampling against
    the reward) or ``dpo`` (``DPOConfig``, offline on the task's preference pairs)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the stage's config that make the method (your ``method_options`` win)."""
    about: str = ""


METHODS: dict[str, Method] = {
    "ppo": Method("ppo", {"advantage": "gae"}, "PPO with a critic: GAE advantages from a learned value head"),
    "grpo": Method("ppo", {"advantage": "grpo", "samples_per_prompt": 4},
                   "GRPO: group-normalised returns (R − mean)/(std + ε) over each prompt's completions, no critic"),
    "rloo": Method("ppo", {"advantage": "rloo", "samples_per_prompt": 4},
                   "RLOO: each completion's return minus the mean of its prompt's other completions, no critic"),
    "reinforce_pp": Method("ppo", {"advantage": "reinforce_pp"},
                           "REINFORCE++: per-token KL-shaped returns whitened over the batch, no critic"),
    "dpo": Method("dpo", {"loss_type": "sigmoid"},
                  "DPO: offline on the task's preference pairs against the frozen SFT model; no sampling, no reward"),
}
"""The methods `tether compare` knows, by name (docs/compare.md, "The methods", has them as a table)."""

WIRED: dict[str, str] = {
    "policy": "the task's SFT model",
    "output_dir": "output_dir/<method>/seed<k>",
    "seed": "seeds",
    "num_updates": "num_updates",
    "time_limit_s": "time_limit_s (budget: time)",
    "rollout_batch_size": "completions_per_update / samples_per_prompt",
    "prompts": "prompts (or the demo task's)",
    "monitor.eval_every": "eval_every",
    "monitor.eval_prompts": "eval_prompts (or the demo task's)",
    "monitor.eval_num_prompts": "eval_num_prompts",
    "monitor.judges": "judges",
}
"""PPO options `tether compare` sets itself (what sets them): giving one in ``ppo`` or ``method_options`` is an
error naming the compare option to set instead."""
PER_METHOD_REFUSED = {"response_length": "the token budget: set it in ppo (shared by every method)",
                      "stop_at_eos": "the token budget: set it in ppo (shared by every method)",
                      "temperature": "the temperature the final evaluation samples every method at: set it in ppo"}
"""Options a single method may not change (they would unmatch the budget)."""

COMPARE_QUICK: dict[str, Any] = {"seeds": [0, 1], "num_updates": 5, "eval_every": 2, "eval_num_prompts": 16,
                                 "num_prompts": 32, "eval_samples": 1}
"""What ``quick: true`` sets (values you give win): 2 seeds × 5 updates, held-out evaluation every 2 updates on 16
prompts, the final evaluation on 32 prompts × 1 completion."""

DEMO_PPO_SKIP = ("num_updates", "rollout_batch_size", "samples_per_prompt", "monitor", "advantage")
"""Options of the demo's PPO stage (``DEMO_STAGES["ppo"]``) that the compare wiring or the registry sets instead."""


class CompareConfig(Section):
    """Several methods (PPO with a critic, GRPO, RLOO, REINFORCE++) trained from one SFT model on one task at a matched
    budget, over several seeds, then evaluated together on held-out prompts: judge gain over SFT with intervals over
    seeds and prompts, win rate, KL, reference perplexity, wall time, time-to-quality and the frontier of judge gain
    against √KL (docs/compare.md)."""

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("the task", "task"), ("methods and seeds", "methods"), ("the budget", "budget"),
        ("evaluation and output", "quality_threshold"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""

    # --- the task ------------------------------------------------------------------------------------------------
    task: Optional[Literal["demo"]] = None
    """`demo`: the demo's task — its SFT SmolLM2, its MiniLM reward model and its prompts, taken from `demo_dir`
    (the demo's first two stages are run there when absent; finished ones are reused). null: give `sft`, a reward
    (`reward_model` and/or `reward_fn`), `prompts` and `eval_prompts` yourself."""
    demo_dir: str = "runs/demo"
    """With `task: demo`: the demo run directory whose data/, sft/ and rm/ are used (or made)."""
    sft: Optional[str] = None
    """The SFT model directory every method starts from (and the frozen reference, and the evaluation's baseline)."""
    reward_model: Optional[str] = None
    """Reward-model directory the methods are trained against."""
    reward_fn: Optional[str] = None
    """Python reward `module:function` (or `file.py:function`) taking (prompts, completions); added to
    reward_model when both are given."""
    prompts: Optional[str] = None
    """Training prompt file (a `prompt` or `messages` column)."""
    pairs: Optional[str] = None
    """Preference pairs (`prompt`/`chosen`/`rejected`, as `tether rm` reads) for the offline method `dpo`; with
    `task: demo` the demo's training pairs."""
    eval_prompts: Optional[str] = None
    """Held-out prompt file: the evaluations during training (the frontier, time-to-quality) and the final one."""
    judges: list[str] = Field(default_factory=lambda: ["vader", "textblob", "afinn"])
    """Independent judges of the evaluations (`vader`, `textblob`, `afinn`); the first one is the quality judge."""

    # --- the methods and seeds -----------------------------------------------------------------------------------
    methods: list[str] = Field(default_factory=lambda: ["ppo", "grpo", "rloo", "reinforce_pp"])
    """Methods to compare, by registry name (`tether.config.compare.METHODS`: ppo, grpo, rloo, reinforce_pp, dpo)."""
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Your options per method, over the registry's (e.g. {grpo: {samples_per_prompt: 2, kl_in: loss, kl_estimator:
    k3}}); response_length, stop_at_eos, temperature and the wired options are refused here (they are shared)."""
    ppo: dict[str, Any] = Field(default_factory=dict)
    """PPO options shared by every method (lr, kl_coef, response_length, temperature, ...); with `task: demo` they
    go over the demo's PPO settings. The wired options (policy, output_dir, seed, num_updates, rollout_batch_size,
    prompts, monitor.eval_every/eval_prompts/eval_num_prompts/judges) are refused: set the compare option
    instead."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    """Training seeds: each method is trained once per seed; the intervals resample seeds as well as prompts."""

    # --- the budget ----------------------------------------------------------------------------------------------
    budget: Literal["tokens", "time"] = "tokens"
    """`tokens`: every method runs num_updates updates of completions_per_update completions of up to
    response_length tokens (the report shows the tokens each actually sampled); `time`: every method trains until
    time_limit_s (num_updates is then the cap)."""
    completions_per_update: int = Field(8, ge=1)
    """Completions sampled per update by every method (a group method: samples_per_prompt for each of
    completions_per_update / samples_per_prompt prompts)."""
    num_updates: int = Field(30, ge=1)
    """Updates per run (`budget: tokens`), or the most a run may take (`budget: time`)."""
    time_limit_s: Optional[float] = Field(None, gt=0)
    """Wall time per run in seconds (`budget: time`, required there; PPO's time_limit_s)."""

    # --- the evaluation ------------------------------------------------------------------------------------------
    quality_threshold: float = 0.10
    """Time-to-quality: the first held-out evaluation during training whose gain over SFT on the quality judge
    (the first of judges) reaches this."""
    eval_every: int = Field(5, ge=1)
    """Held-out evaluation every this many updates during training (and at the last): the frontier's points."""
    eval_num_prompts: int = Field(32, ge=1)
    """Held-out prompts of each evaluation during training (the first of eval_prompts)."""
    num_prompts: Optional[int] = Field(None, ge=1)
    """Held-out prompts of the final evaluation (the first this many); null: all."""
    eval_samples: int = Field(1, ge=1)
    """Completions per held-out prompt per run in the final evaluation."""
    output_dir: OutputDir = "runs/compare"
    """Runs go to `<output_dir>/<method>/seed<k>/`, the evaluation to `eval/`, the report to compare.json,
    compare.md and frontier.html."""
    keep_run_checkpoints: bool = False
    """Keep each finished run's `checkpoints/` (what only resuming an unfinished run needs: the weights and
    optimizer state every `checkpoint_every` updates, about 3 GB per SmolLM2 run). false: deleted once the run's
    `final/` is saved (`final/` and `best/` stay), so a 15-run comparison needs about 15 GB of disk, not 60."""
    quick: bool = False
    """Smoke-size comparison (`tether.config.compare.COMPARE_QUICK`: 2 seeds × 5 updates, smaller evaluations);
    same as --quick. Values you give win."""
    threads: Optional[int] = Field(None, ge=1)
    """torch intra-op threads; null: torch's default."""

    @model_validator(mode="before")
    @classmethod
    def _quick(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("quick") is True:
            data = {**COMPARE_QUICK, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> "CompareConfig":
        if not self.methods:
            raise ValueError("methods: give at least one method")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"methods: unknown method {m!r}; known: {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: a method is listed twice")
        for m in self.method_options:
            if m not in self.methods:
                raise ValueError(f"method_options.{m}: not one of methods ({', '.join(self.methods)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: give one or more distinct seeds")
        if self.budget == "time" and self.time_limit_s is None:
            raise ValueError("time_limit_s: required with budget=time (seconds per run)")
        if self.budget == "tokens" and self.time_limit_s is not None:
            raise ValueError("time_limit_s: only with budget=time (budget=tokens runs num_updates updates)")
        offline = [m for m in self.methods if METHODS[m].stage == "dpo"]
        if offline and self.budget == "time":
            raise ValueError(f"methods: {offline[0]} has no wall-time limit; budget=time compares the sampling "
                             "methods only")
        if offline and self.task is None and self.pairs is None:
            raise ValueError(f"pairs: required for method {offline[0]} (preference pairs) unless task=demo")
        if self.task is None:
            for key in ("sft", "prompts", "eval_prompts"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key}: required unless task=demo")
            if self.reward_model is None and self.reward_fn is None:
                raise ValueError("reward_model: give a reward (reward_model and/or reward_fn) unless task=demo")
        for where, opts in (("ppo", self.ppo), *((f"method_options.{m}", o) for m, o in self.method_options.items())):
            if not isinstance(opts, dict):
                raise ValueError(f"{where}: must be a mapping of option: value")
            monitor = opts.get("monitor") or {}
            if not isinstance(monitor, dict):
                raise ValueError(f"{where}.monitor: must be a mapping of option: value")
            for key in [*opts, *(f"monitor.{k}" for k in monitor)]:
                if key in WIRED:
                    raise ValueError(f"{where}.{key} is set by tether compare ({WIRED[key]}); remove it")
                if where != "ppo" and key in PER_METHOD_REFUSED:
                    raise ValueError(f"{where}.{key}: one method may not change {PER_METHOD_REFUSED[key]}")
                if where == "ppo" and any(key in METHODS[m].options for m in self.methods):
                    raise ValueError(f"ppo.{key}: set per method by the registry (tether.config.compare.METHODS); "
                                     f"give it in method_options.<method> instead")
        for m in self.methods:  # every run's config is valid now, not after hours of the others' training
            self.stage_config(m, self.seeds[0])
        return self

    # ------------------------------------------------------------------------------------------ derived, read-only
    @property
    def task_paths(self) -> dict[str, Optional[str]]:
        """``{sft, reward_model, reward_fn, prompts, eval_prompts}`` of the task (the demo's under ``demo_dir``)."""
        if self.task != "demo":
            return {"sft": self.sft, "reward_model": self.reward_model, "reward_fn": self.reward_fn,
                    "prompts": self.prompts, "eval_prompts": self.eval_prompts, "pairs": self.pairs}
        demo = self.demo_config()
        return {"sft": self.sft or demo.sft.output_dir, "reward_model": self.reward_model or demo.rm.output_dir,
                "reward_fn": self.reward_fn, "prompts": self.prompts or f"{demo.data_dir}/prompts_train.jsonl",
                "eval_prompts": self.eval_prompts or f"{demo.data_dir}/prompts_eval.jsonl",
                "pairs": self.pairs or f"{demo.data_dir}/pairs_train.jsonl"}

    def demo_config(self):
        """The ``DemoConfig`` whose data and first two stages the demo task uses."""
        from tether.config.pipeline import DemoConfig

        return build(DemoConfig, {"output_dir": self.demo_dir}, "demo")

    def run_dir(self, method: str, seed: int) -> Path:
        return Path(self.output_dir) / method / f"seed{seed}"

    def stage_config(self, method: str, seed: int):
        """The validated config of one run: for a ``ppo``-stage method (a ``PPOConfig``) the demo's PPO settings
        (``task: demo``), the shared ``ppo`` options, the registry's options for ``method``, your
        ``method_options``, then the wiring (budget, seed, paths); for ``dpo`` (a ``DPOConfig``) the registry's
        options, yours, then the model (the SFT model), the task's pairs, seed and output_dir."""
        from tether.config.pipeline import DEMO_STAGES

        spec = METHODS[method]
        if spec.stage == "dpo":
            from tether.config.dpo import DPOConfig

            data = {**_deepcopy(dict(spec.options)), **_deepcopy(self.method_options.get(method, {}))}
            for key in ("model", "train_file"):
                if key in data:
                    raise ValueError(f"method_options.{method}.{key} is set by tether compare (the task's "
                                     f"{'SFT model' if key == 'model' else 'pairs'}); remove it")
            data.update(model=self.task_paths["sft"], train_file=self.task_paths["pairs"],
                        output_dir=str(self.run_dir(method, seed)), seed=seed)
            try:
                return build(DPOConfig, data, f"methods.{method}")
            except ConfigError as err:
                raise ValueError(str(err)) from None
        data: dict[str, Any] = {}
        if self.task == "demo":
            data = {k: v for k, v in _deepcopy(DEMO_STAGES["ppo"]).items() if k not in DEMO_PPO_SKIP}
        monitor: dict[str, Any] = {}
        for opts in (self.ppo, dict(spec.options), self.method_options.get(method, {})):
            opts = _deepcopy(dict(opts))
            monitor.update(opts.pop("monitor", None) or {})
            data.update(opts)
        k = int(data.get("samples_per_prompt", 1))
        if k < 1 or self.completions_per_update % k:
            raise ValueError(f"methods.{method}: samples_per_prompt={data.get('samples_per_prompt')} must divide "
                             f"completions_per_update={self.completions_per_update}")
        paths = self.task_paths
        data.update(policy=paths["sft"], prompts=paths["prompts"], output_dir=str(self.run_dir(method, seed)),
                    seed=seed, num_updates=self.num_updates, rollout_batch_size=self.completions_per_update // k,
                    monitor={**monitor, "eval_every": self.eval_every, "eval_prompts": paths["eval_prompts"],
                             "eval_num_prompts": self.eval_num_prompts, "judges": list(self.judges)})
        if paths["reward_model"] is not None:
            data["reward_model"] = paths["reward_model"]
        if paths["reward_fn"] is not None:
            data["reward_fn"] = paths["reward_fn"]
        if self.budget == "time":
            data["time_limit_s"] = self.time_limit_s
            if data.setdefault("lr_schedule", "constant") != "constant":
                raise ValueError(f"lr_schedule={data['lr_schedule']}: budget=time needs lr_schedule=constant (a "
                                 "schedule over num_updates would anneal each method differently)")
        try:
            return build(PPOConfig, data, f"methods.{method}")
        except ConfigError as err:
            raise ValueError(str(err)) from None
