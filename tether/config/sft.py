"""``SFTConfig``: supervised fine-tuning of a causal LM on prompt/completion pairs or chat conversations.

Defaults are sized for a small model on a 2-core CPU; the N+ reference (lr 3e-6, 1 epoch, dropout off) is for 1B+
models on GPUs.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from tether.config.base import DataSource, DeviceName, OutputDir, StepRun
from tether.config.monitor import ReportTo, report_to_field


class SFTConfig(StepRun):
    """Supervised fine-tuning (next-token cross-entropy) of a causal LM."""

    # --- model and data --------------------------------------------------------------------------
    model: Optional[str] = None
    """Directory of the causal LM to fine-tune (`save_pretrained` format, with its tokenizer), or a Hub name `org/name`
    in the local cache (docs/data.md). Required unless a model object is passed to `train_sft`."""
    output_dir: OutputDir = "runs/sft"
    """Where the fine-tuned model (safetensors + tokenizer + tether_config.yaml) and metrics.jsonl are written."""
    train_file: DataSource
    """Training data (docs/data.md): a JSONL/JSON/CSV/parquet file (also .gz/.zst), a glob, a directory of shards, a
    `datasets` save_to_disk directory, a cached Hub dataset name, or a `datasets.Dataset` from Python; with `prompt`
    + `completion`, chat `messages` (rendered with the tokenizer's chat template when it has one), or `text`."""
    eval_file: Optional[DataSource] = None
    """Held-out data in the same format; default: `eval_fraction` of the training records, drawn with `seed`."""
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of the training records held out for the evaluation loss when there is no `eval_file` (0: no eval)."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run. Off unless you trust the checkpoint."""
    pad_policy: Literal["add", "refuse"] = "add"
    """When the tokenizer has no pad token or pads with EOS: `add` a distinct `<|pad|>` token, or `refuse`."""
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

    # --- what is learned -------------------------------------------------------------------------
    completion_only_loss: bool = True
    """Loss on completion tokens only (assistant turns for chat data); false: on every token of the sequence, as N+
    does. An EOS is appended to each completion and is a target."""
    packing: bool = False
    """Pack several examples into each row of `max_length` tokens (best-fit, none split; positions restart per
    example, and each example attends only to itself)."""
    max_length: int = Field(512, ge=8)
    """Longest sequence in tokens (prompt + completion + EOS); longer examples keep their first `max_length` tokens
    (and lose their EOS; the number truncated is logged)."""

    # --- optimisation ----------------------------------------------------------------------------
    num_epochs: int = Field(1, ge=1)
    """Passes over the training data (N+: 1)."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps even if epochs remain; also sets the schedule length."""
    batch_size: int = Field(4, ge=1)
    """Sequences (packed rows with `packing`) per forward/backward."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the loss is the token mean over all of them (accumulation-invariant)."""
    lr: float = Field(2e-5, gt=0.0)
    """Peak learning rate of AdamW."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Decay after warm-up: constant, linear to 0, or cosine to 0 (N+ uses cosine)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (matrices only; biases and norms are never decayed)."""
    adam_eps: float = Field(1e-5, gt=0.0)
    """AdamW epsilon (N+: 1e-5)."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; null: no clipping (the norm is logged either way)."""
    seed: int = 0
    """Seed for the eval split, shuffling and any random initialisation."""

    # --- logging ---------------------------------------------------------------------------------
    log_every: int = Field(10, ge=1)
    """Write a metrics.jsonl record every this many optimizer steps (and at the last step)."""
    eval_every: Optional[int] = Field(None, ge=1)
    """Evaluate every this many optimizer steps; null: only at the end."""
    eval_batch_size: int = Field(8, ge=1)
    """Sequences per forward when computing the evaluation loss."""
    report_to: ReportTo = report_to_field()

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("model and data", "model"), ("what is learned", "completion_only_loss"), ("optimisation", "num_epochs"),
        ("logging", "log_every"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""
    RESUME_SAFE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips", "log_every",
        "eval_every", "eval_batch_size", "report_to"})
    """Fields a resumed run may change: they move outputs, checkpoints or logs, never the trained weights."""
    RUN_LENGTH: ClassVar[frozenset[str]] = frozenset({"num_epochs", "max_steps"})
    """Fields that may grow on resume when the learning-rate schedule does not depend on them (`constant`)."""

    @model_validator(mode="after")
    def _check(self) -> "SFTConfig":
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        if self.eval_file is not None and "eval_fraction" in self.model_fields_set and self.eval_fraction > 0:
            raise ValueError("give either eval_file or eval_fraction, not both")
        if self.eval_file is not None and self.eval_file == self.train_file:
            raise ValueError("eval_file is the training file; held-out data must differ")
        if self.model is not None and self.output_dir.rstrip("/") == self.model.rstrip("/"):
            raise ValueError("output_dir is the input model directory; write the fine-tuned model elsewhere")
        return self
