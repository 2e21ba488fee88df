"""``DPOConfig``: direct preference optimisation (DPO, or IPO) of a causal LM on preference pairs, against a frozen
reference (the starting model).

Defaults follow TRL's ``DPOConfig`` where tether has the same option (β 0.1, sigmoid loss, no label smoothing, lr
1e-6, ``Trainer``'s linear decay and AdamW ε 1e-8); the batch sizes are sized for a small model on a 2-core CPU.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from tether.config.base import DataSource, DeviceName, OutputDir, StepRun
from tether.config.lora import LoraConfig
from tether.config.monitor import ReportTo, report_to_field


class DPOConfig(StepRun):
    """DPO / IPO: the policy (a copy of `model`) learns from `prompt`/`chosen`/`rejected` pairs against the frozen
    starting model, with no reward model and no sampling."""

    # --- model and data --------------------------------------------------------------------------
    model: Optional[str] = None
    """Directory of the causal LM to start from (usually the SFT output, `save_pretrained` format with its tokenizer),
    or a Hub name in the local cache. The policy starts as this model and its frozen copy is the reference. Required
    unless a model object is passed to `train_dpo`."""
    output_dir: OutputDir = "runs/dpo"
    """Run directory: the trained policy goes to `output_dir/final/` (and `best/`, the lowest held-out loss), beside
    metrics.jsonl, checkpoints/ and report.html."""
    train_file: DataSource
    """Preference pairs, the same files as `tether rm` reads (docs/data.md): `prompt`, `chosen`, `rejected` (strings or
    chat message lists), or `chosen`/`rejected` alone (the prompt is their shared start)."""
    eval_file: Optional[DataSource] = None
    """Held-out pairs in the same format; default: `eval_fraction` of the training pairs, drawn with `seed`."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of the training pairs held out when there is no `eval_file` (0: no held-out evaluation, no best/)."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run. Off unless you trust the checkpoint."""
    pad_policy: Literal["add", "refuse"] = "add"
    """When the tokenizer has no pad token or pads with EOS: `add` a distinct `<|pad|>` token, or `refuse`."""
    device: DeviceName = "auto"
    """Where the policy and the reference run: `auto` (a CUDA GPU when one is visible, else the CPU), `cpu`, `cuda` or
    `cuda:N`. DPO runs as one process (README, "Devices and several processes")."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype: `bfloat16` runs the policy and reference forwards under `torch.autocast` while the weights and
    AdamW state stay float32; log-probabilities and the loss are float32 either way (tether.models.precision)."""

    # --- what is learned -------------------------------------------------------------------------
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """`sigmoid`: DPO, −log σ(β·h) (Rafailov et al. 2023); `ipo`: IPO, (h − 1/(2β))² (Azar et al. 2023); h is the
    chosen-minus-rejected difference of the policy-to-reference log-ratios, each summed over completion tokens."""
    beta: float = Field(0.1, gt=0.0)
    """β: the strength of the tie to the reference (DPO's temperature; IPO's target margin is 1/(2β))."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Conservative DPO: the share ε of pairs assumed mislabelled, loss −(1−ε)·log σ(β·h) − ε·log σ(−β·h) (sigmoid
    only)."""
    precompute_ref_logprobs: bool = False
    """Score every pair with the reference once, before the first step, and keep no reference model while training
    (half the model memory). The scores are stored in output_dir (reference_logps.safetensors, copied into each
    checkpoint) so a resumed run reads them back; the training is the same as with the live reference."""
    policy_lora: Optional[LoraConfig] = None
    """Train a LoRA adapter (through peft) instead of every weight of the policy: `r`, `alpha`, `dropout`,
    `target_modules`, `merge_on_save`. The reference is then the same model with the adapter switched off (no
    second copy); `final/` and `best/` hold the adapter (and `merged/` with `merge_on_save`), which `tether eval`
    and `tether compare` read; null: full fine-tuning (docs/memory.md)."""
    max_length: int = Field(512, ge=8)
    """Longest prompt + completion (+ EOS) in tokens; longer ones lose prompt tokens from the left first (never the
    BOS), then completion tokens from the right (the EOS with them). The number truncated is logged."""
    max_prompt_length: Optional[int] = Field(None, ge=1)
    """Longest prompt in tokens (oldest tokens dropped first, never the BOS); null: only `max_length` limits it."""

    # --- optimisation ----------------------------------------------------------------------------
    num_epochs: int = Field(1, ge=1)
    """Passes over the training pairs."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps even if epochs remain; also sets the schedule length."""
    batch_size: int = Field(4, ge=1)
    """Pairs per forward/backward (chosen and rejected go through one forward: 2 × batch_size rows)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the loss is the mean over all their pairs."""
    lr: float = Field(1e-6, gt=0.0)
    """Peak learning rate of AdamW (TRL's DPO default 1e-6)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Decay after warm-up: constant, linear to 0 (TRL's default), or cosine to 0."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (matrices only)."""
    adam_eps: float = Field(1e-8, gt=0.0)
    """AdamW epsilon (transformers' default, as TRL)."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; null: no clipping (the norm is logged either way)."""
    seed: int = 0
    """Seed for the eval split and the shuffling."""

    # --- logging ---------------------------------------------------------------------------------
    log_every: int = Field(10, ge=1)
    """Write a metrics.jsonl record every this many optimizer steps (and at the last step)."""
    eval_every: Optional[int] = Field(None, ge=1)
    """Evaluate on the held-out pairs every this many optimizer steps (and at the last); null: only at the end.
    The policy with the lowest held-out loss is saved to output_dir/best/."""
    eval_batch_size: int = Field(8, ge=1)
    """Pairs per forward when evaluating and when precomputing the reference log-probabilities."""
    report_to: ReportTo = report_to_field()

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("model and data", "model"), ("what is learned", "loss_type"), ("optimisation", "num_epochs"),
        ("logging", "log_every"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""
    RESUME_SAFE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips", "log_every",
        "report_to"})
    """Fields a resumed run may change: they move outputs, checkpoints or logs, never the trained weights (the
    evaluation cadence picks best/, so it is not among them)."""
    RUN_LENGTH: ClassVar[frozenset[str]] = frozenset({"num_epochs", "max_steps"})
    """Fields that may grow on resume when the learning-rate schedule does not depend on them (`constant`)."""

    @model_validator(mode="after")
    def _check(self) -> "DPOConfig":
        if self.sharding != "none":
            raise ValueError(f"sharding={self.sharding}: DPO runs on one process only (see README, \"Sharded "
                             "training (FSDP)\")")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        if self.eval_file is not None and "eval_fraction" in self.model_fields_set and self.eval_fraction > 0:
            raise ValueError("give either eval_file or eval_fraction, not both")
        if self.eval_file is not None and self.eval_file == self.train_file:
            raise ValueError("eval_file is the training file; held-out data must differ")
        if self.model is not None and self.output_dir.rstrip("/") == self.model.rstrip("/"):
            raise ValueError("output_dir is the input model directory; write the policy elsewhere")
        if self.loss_type == "ipo" and self.label_smoothing > 0:
            raise ValueError("label_smoothing applies to loss_type=sigmoid only; IPO has no label smoothing")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length={self.max_prompt_length} must be < max_length={self.max_length} "
                             "(room for the completion)")
        return self
