"""``MonitorConfig`` and ``AlarmConfig``: what a run logs besides ``metrics.jsonl``, when it evaluates on held-out
prompts, and the thresholds of the alarms that watch for reward hacking and broken set-ups (``tether.monitor``).

Alarm thresholds are deliberately loose: an alarm should mean "look at this run now", not "a number wiggled".
``docs/monitoring.md`` lists every alarm with its metric, threshold field and usual remedy.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field

from tether.config.base import Section


FP32_LOGPROB_MISMATCH, BF16_LOGPROB_MISMATCH = 1e-3, 1.0
FP32_RATIO_DEV, BF16_RATIO_DEV = 1e-3, 0.2
"""Default tolerances of the two consistency alarms per precision: float32 forwards agree to ~1e-5; bf16 autocast
rounds the logits differently for the cached sampler and the full training forward (docs/monitoring.md)."""


TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
"""The trackers ``report_to`` may name (through accelerate's trackers; docs/monitoring.md)."""


def _tracker_list(value: Any) -> Any:
    """``wandb`` or ``tensorboard,wandb`` (a command-line value) as a list; lists and the rest pass unchanged."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _check_trackers(value: list[str]) -> list[str]:
    if "none" in value and len(value) > 1:
        raise ValueError(f"report_to={value}: `none` cannot be combined with a tracker")
    if len(set(value)) != len(value):
        raise ValueError(f"report_to={value} names a tracker twice")
    return value


ReportTo = Annotated[list[Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]],
                     BeforeValidator(_tracker_list), AfterValidator(_check_trackers)]
"""The type of every stage's ``report_to``: a list (or a comma-separated string) of trackers; ``none``: none."""

REPORT_TO_DOC = ("Trackers that get every logged metric and the config: `tensorboard` (`<output_dir>/tb`), `wandb`, "
                 "`mlflow`, `trackio` (the last three: `pip install 'tether[trackers]'`), or `none`; a list, or one "
                 "name / comma-separated names on the command line. W&B and MLflow runs are named after the output "
                 "directory, and a resumed run continues the same tracker run (docs/monitoring.md).")
"""The one description of ``report_to``, shared by every stage's field."""


def report_to_field(default: tuple[str, ...] = ("tensorboard",)) -> Any:
    """The ``report_to`` field of a stage config (same type, default and meaning in every stage)."""
    return Field(default_factory=lambda: list(default), description=REPORT_TO_DOC)


class AlarmConfig(Section):
    """Thresholds of the training alarms; each alarm names its metric, value, threshold and usual remedy."""

    enabled: bool = True
    """Check the alarms after every update (warnings on stderr, in `alarms.jsonl` and in the report)."""
    fatal: bool = False
    """Stop the run with an error at the first alarm instead of warning."""
    window: int = Field(8, ge=3)
    """Updates looked at by the trend alarms (length drifting with reward, negative KL on average)."""
    length_corr: float = Field(0.8, gt=0, le=1)
    """`length_hacking`: fires when the correlation of mean response length with the score over `window` updates
    is at least this and the length moved by `length_drift` or more."""
    length_drift: float = Field(0.25, gt=0)
    """`length_hacking`: relative change of the mean response length over the window that counts as drifting."""
    ngram: int = Field(3, ge=1)
    """`repetition`: n of the n-grams (word/punctuation tokens) counted in the sampled completions."""
    repetition_max: float = Field(0.3, gt=0, le=1)
    """`repetition`: fires when the share of repeated n-grams within completions (averaged over them) reaches this."""
    token_share_max: float = Field(0.5, gt=0, le=1)
    """`dominant_token`: fires when one word/punctuation token makes up this share of all completion tokens."""
    distinct_min: float = Field(0.3, ge=0, le=1)
    """`one_answer`: fires when distinct completions / completions falls below this (with 4 or more completions)."""
    entropy_ratio_min: float = Field(0.25, ge=0, lt=1)
    """`entropy_collapse`: fires when the per-token entropy falls below this fraction of its value at the start."""
    kl_max: float = Field(10.0, gt=0)
    """`kl_high`: fires when `objective/kl` (nats per sequence) exceeds this."""
    kl_negative_tol: float = Field(0.1, ge=0)
    """`kl_negative`: fires when the mean `objective/kl` over the window is below −this."""
    clipfrac_max: float = Field(0.3, gt=0, le=1)
    """`clipfrac_high`: fires when `policy/clipfrac` exceeds this."""
    approx_kl_max: float = Field(0.05, gt=0)
    """`approx_kl_high`: fires when `policy/approx_kl` exceeds this."""
    explained_variance_min: float = 0.0
    """`value_not_learning`: fires when `value/explained_variance` is at or below this for
    `explained_variance_patience` updates in a row."""
    explained_variance_patience: int = Field(3, ge=1)
    """`value_not_learning`: updates in a row that count; only updates after `critic_warmup_updates` + this many
    are looked at."""
    judge_drop: float = Field(0.05, ge=0)
    """`judge_falling`: fires when a held-out judge is this far below its best evaluation while the proxy reward
    is above its value at that best evaluation."""
    logprob_mismatch_max: Optional[float] = Field(None, gt=0)
    """`logprob_mismatch`: fires when `rollout/logprob_mismatch_max` (the largest |log π_sampler − log π_train| over
    the rollout's tokens, nats) exceeds this: the sampler is not drawing from the tempered distribution the loss
    assumes. null: 1e-3 when the forwards run in float32, 1.0 under `autocast: bfloat16` (bf16 rounding alone reaches
    0.16–0.26 on SmolLM2-135M)."""
    ratio_dev_max: Optional[float] = Field(None, gt=0)
    """`ratio_not_one`: fires when `policy/first_minibatch_ratio_dev` (max |ratio − 1| in the first minibatch, before
    any step) exceeds this: old and new log-probs come from different computations. null: 1e-3 in float32, 0.2 under
    `autocast: bfloat16`."""

    def logprob_tolerances(self, autocast: str = "none") -> tuple[float, float]:
        """``(logprob_mismatch_max, ratio_dev_max)`` for a run whose forwards use ``autocast`` (``none`` or
        ``bfloat16``): the configured values, or the defaults of that precision."""
        bf16 = autocast != "none"
        mismatch = self.logprob_mismatch_max or (BF16_LOGPROB_MISMATCH if bf16 else FP32_LOGPROB_MISMATCH)
        ratio = self.ratio_dev_max or (BF16_RATIO_DEV if bf16 else FP32_RATIO_DEV)
        return mismatch, ratio


class MonitorConfig(Section):
    """Live logs (TensorBoard, W&B), sample tables, held-out evaluation, best checkpoint, the end-of-run report."""

    preflight: bool = True
    """Run the fast `tether doctor` checks before training and stop on a failure."""
    report_to: ReportTo = report_to_field()
    tensorboard: bool = True
    """Shorthand: false drops `tensorboard` from `report_to`."""
    wandb: bool = False
    """Shorthand: true adds `wandb` to `report_to`."""
    wandb_project: Optional[str] = None
    """W&B project; null: the `WANDB_PROJECT` environment variable, else `tether`."""
    log_every: int = Field(1, ge=1)
    """Off a terminal (SLURM, nohup, CI): one progress line every this many updates (and at the last one)."""
    report: bool = True
    """Write `<output_dir>/report.html` when the run ends (needs plotly: `pip install tether[report]`)."""
    eval_every: int = Field(0, ge=0)
    """Score the held-out prompts every this many updates and at the last one (0: never)."""
    eval_prompts: Optional[str] = None
    """Held-out prompt file (same formats as `prompts`); required when eval_every > 0."""
    eval_num_prompts: int = Field(32, ge=1)
    """Use at most this many held-out prompts (the first ones)."""
    judges: list[str] = Field(default_factory=list)
    """Independent judges scored on the held-out completions: `vader`, `textblob`, `afinn`, or a Python function
    `module:function` taking a list of texts; logged as `eval/<name>`."""
    eval_greedy: bool = False
    """Greedy held-out completions instead of samples at the training temperature (no `eval/kl` then)."""
    best_metric: Optional[str] = None
    """Metric that picks the best checkpoint (kept in `<output_dir>/best`), e.g. `eval/vader`; default: the first
    judge, else `eval/proxy`."""
    best_mode: Literal["max", "min"] = "max"
    """`max` when a higher best_metric is better, `min` when lower is."""
    alarms: AlarmConfig = Field(default_factory=AlarmConfig)
    """Alarm thresholds."""

    def trackers(self) -> list[str]:
        """The trackers this run logs to: `report_to` less `none`, with the `tensorboard`/`wandb` shorthands."""
        out = [t for t in self.report_to if t != "none" and (t != "tensorboard" or self.tensorboard)]
        return out + ["wandb"] if self.wandb and "wandb" not in out else out
