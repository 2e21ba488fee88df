"""``RMConfig``: a Bradley–Terry reward model on preference pairs, for decoder or encoder backbones.

Defaults are sized for a small backbone (e.g. all-MiniLM-L6-v2) on a 2-core CPU.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from tether.config.base import DataSource, DeviceName, OutputDir, StepRun
from tether.config.monitor import ReportTo, report_to_field


class RMConfig(StepRun):
    """Reward-model training: a 1-output sequence classifier fitted to `prompt`/`chosen`/`rejected` pairs."""

    # --- model and data --------------------------------------------------------------------------
    model: Optional[str] = None
    """Backbone directory (or a Hub name in the local cache): an SFT causal LM (its head is read at the EOS) or an
    encoder such as BERT/MiniLM (pooled [CLS]); a directory that is already a reward model continues from its head.
    Required unless a model object is passed to `train_rm`."""
    output_dir: OutputDir = "runs/rm"
    """Where the reward model (safetensors + tokenizer + tether_config.yaml + tether_rm.json) and metrics.jsonl go."""
    train_file: DataSource
    """Preference pairs (docs/data.md): a JSONL/JSON/CSV/parquet file (also .gz/.zst), a glob, a directory of shards, a
    `datasets` save_to_disk directory, a cached Hub dataset name, or a `datasets.Dataset` from Python; with `prompt`,
    `chosen`, `rejected` (strings, or chat message lists), or `chosen`/`rejected` alone (the prompt is their shared
    start)."""
    eval_file: Optional[DataSource] = None
    """Held-out pairs in the same format; default: `eval_fraction` of the training pairs, drawn with `seed`."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of the training pairs held out for accuracy when there is no `eval_file` (0: no evaluation)."""
    margin_column: Optional[str] = None
    """Column with a per-pair margin m (a number): the loss becomes −log σ(r_chosen − r_rejected − m)."""
    group_column: Optional[str] = "group"
    """Column naming each pair's group (rater, domain, …) for per-group accuracy. The default `group` is used only
    when present; a column named explicitly must be in every record."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run. Off unless you trust the checkpoint."""
    pad_policy: Literal["add", "refuse"] = "add"
    """Decoder backbones whose tokenizer has no pad token or pads with EOS: `add` a distinct `<|pad|>`, or `refuse`."""
    device: DeviceName = "auto"
    """Where the models train: `auto` (a CUDA GPU when one is visible, else the CPU), `cpu`, `cuda` or `cuda:N`.
    Under `torchrun`/`accelerate launch` each process takes its own GPU (or the CPU) and trains on its share of
    each batch (README, "Devices and several processes")."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype while training: `bfloat16` runs the forwards under `torch.autocast` (bf16 matmuls) while the
    weights and AdamW state stay float32 master copies, so small updates are not rounded away; the loss is float32
    either way and the model is saved in float32 (tether.models.precision)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block in the backward pass instead of keeping its activations: less memory for
    about one more forward of time; gradients unchanged (docs/memory.md)."""
    init_head: Literal["auto", "always", "never"] = "auto"
    """Score head initialisation N(0, 1/√(d+1)), bias 0 (ppo_details.md C1): `auto` when the checkpoint has no trained
    head (loaded from a directory; a model object passed in keeps its head), `always`, or `never`."""
    max_length: int = Field(512, ge=8)
    """Longest prompt + completion in tokens; decoders drop prompt tokens from the left first and keep the EOS."""

    # --- normalisation ---------------------------------------------------------------------------
    normalize: Literal["none", "shift", "shift_scale"] = "shift"
    """After training, map scores so the reference completions have mean 0 (`shift`), or mean 0 and std 1
    (`shift_scale`). The map is folded into the model's weights (pair accuracy is unchanged) and the statistics are
    written to tether_rm.json (ppo_details.md C5)."""
    normalize_file: Optional[DataSource] = None
    """Reference completions for the normalisation: a file of `prompt` + `completion` records or of preference pairs
    (their `chosen`). Default: the chosen completions of the training pairs."""

    # --- optimisation ----------------------------------------------------------------------------
    num_epochs: int = Field(1, ge=1)
    """Passes over the training pairs (N+ and Ziegler: 1, to avoid overfitting)."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps even if epochs remain; also sets the schedule length."""
    batch_size: int = Field(8, ge=1)
    """Pairs per forward/backward (chosen and rejected go through one forward: 2 × batch_size rows)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the loss is the mean over all their pairs."""
    lr: float = Field(2e-5, gt=0.0)
    """Peak learning rate of AdamW."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Decay after warm-up: constant, linear to 0, or cosine to 0 (N+ uses cosine)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (matrices only)."""
    adam_eps: float = Field(1e-5, gt=0.0)
    """AdamW epsilon (N+: 1e-5)."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; null: no clipping (the norm is logged either way)."""
    seed: int = 0
    """Seed for the eval split, shuffling and the head initialisation."""

    # --- logging ---------------------------------------------------------------------------------
    log_every: int = Field(10, ge=1)
    """Write a metrics.jsonl record every this many optimizer steps (and at the last step)."""
    eval_every: Optional[int] = Field(None, ge=1)
    """Evaluate every this many optimizer steps; null: only at the end."""
    eval_batch_size: int = Field(16, ge=1)
    """Pairs per forward when evaluating and when scoring the reference completions."""
    report_to: ReportTo = report_to_field()

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("model and data", "model"), ("normalisation", "normalize"), ("optimisation", "num_epochs"),
        ("logging", "log_every"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""
    RESUME_SAFE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips", "log_every",
        "eval_every", "eval_batch_size", "report_to"})
    """Fields a resumed run may change: they move outputs, checkpoints or logs, never the trained weights."""
    RUN_LENGTH: ClassVar[frozenset[str]] = frozenset({"num_epochs", "max_steps"})
    """Fields that may grow on resume when the learning-rate schedule does not depend on them (`constant`)."""

    @model_validator(mode="after")
    def _check(self) -> "RMConfig":
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        if self.eval_file is not None and "eval_fraction" in self.model_fields_set and self.eval_fraction > 0:
            raise ValueError("give either eval_file or eval_fraction, not both")
        if self.eval_file is not None and self.eval_file == self.train_file:
            raise ValueError("eval_file is the training file; held-out data must differ")
        if self.model is not None and self.output_dir.rstrip("/") == self.model.rstrip("/"):
            raise ValueError("output_dir is the input model directory; write the reward model elsewhere")
        if self.normalize == "none" and self.normalize_file is not None:
            raise ValueError("normalize_file is set but normalize is 'none'")
        if self.margin_column is not None and self.margin_column == self.group_column:
            raise ValueError("margin_column and group_column name the same column")
        return self
