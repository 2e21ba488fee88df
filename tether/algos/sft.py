"""Supervised fine-tuning: next-token cross-entropy on completion tokens (or every token), then a saved model.

The loop, step by step:
1. load the model and tokenizer (a distinct pad token, dropout off), read and validate the data, hold out an eval split;
2. tokenise (prompt tokens masked, one EOS at the end of each completion), optionally pack;
3. for each optimizer step: ``grad_accum`` right-padded micro-batches, loss = token mean over all their targets;
4. clip, step, schedule, log to ``metrics.jsonl``; evaluate every ``eval_every`` steps and at the end; checkpoint
   every ``checkpoint_every`` steps and at the end (a re-run resumes from the newest; docs/reliability.md);
5. save the model atomically in ``save_pretrained`` format with the tokenizer and ``tether_config.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tether.algos.common import split_eval
from tether.algos.offline import offline_step, start_offline_run
from tether.console import note, progress as progress_bar
from tether.engine.dist import setup as setup_dist
from tether.engine.optim import set_seed
from tether.engine.outputs import save_model_atomic
from tether.engine.run_dir import read_jsonl, stage_run_dir
from tether.engine.sharding import full_weights, plan as sharding_plan, shard
from tether.monitor.logger import STAGE_LOG_FILES
from tether.monitor.trackers import check_stage_trackers
from tether.config.base import dump
from tether.config.sft import SFTConfig
from tether.data.readers import adopt_chat_template, read_records
from tether.data.sft import collate_sft, pack_sft, tokenize_sft_records
from tether.errors import ConfigError, DataError
from tether.models.card import model_card
from tether.models.checkpointing import enable_checkpointing
from tether.models.forward import causal_lm_logits
from tether.models.load import (
    disable_dropout,
    ensure_pad_token,
    load_causal_lm,
    load_tokenizer,
    resize_for_tokenizer,
    vocab_check,
)
from tether.models.precision import compute_context, master_dtype, master_weights
from tether.ops.precision import to_compute

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    """What ``train_sft`` produced."""

    output_dir: Path
    """The saved model directory."""
    eval_loss: float | None
    """Token-mean cross-entropy on the held-out split after training (None without one)."""
    train_loss: float | None
    """Token-mean loss of the last optimizer step."""
    steps: int
    """Optimizer steps taken."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Every record written to ``metrics.jsonl``."""


def sft_loss(logits: Tensor, labels: Tensor, loss_mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
    """Masked next-token cross-entropy: ``Σ_{t: mask[t]} −log p(labels[t] | tokens < t) / num_tokens``.

    Logits at column ``t`` score the token at ``t + 1``; label values where ``loss_mask`` is False are never read.
    ``num_tokens`` defaults to this batch's target count; pass the count of the whole accumulation group so that the
    micro-batch losses add up to the group's token mean (ppo_details.md B1, I4).
    Shapes: logits (B, L, V), labels (B, L) long, loss_mask (B, L) bool → scalar float32 (float64 in, float64 out).
    """
    mask = loss_mask[:, 1:].bool()
    target = torch.where(mask, labels[:, 1:], torch.zeros_like(labels[:, 1:]))
    lg = logits[:, :-1]
    lg = to_compute(lg)
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
    total = torch.where(mask, nll, torch.zeros_like(nll)).sum()
    n = mask.sum() if num_tokens is None else num_tokens
    if not float(n) > 0:
        raise ValueError("no target token in the batch (num_tokens is 0)")
    return total / n


def lm_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Logits for an SFT batch: positions from the mask, or the packed ``position_ids`` (no mask → each packed
    example attends only to itself). Shapes: (B, L) → (B, L, V)."""
    if "position_ids" in batch:
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return causal_lm_logits(model, batch["input_ids"], batch["attention_mask"])


@torch.no_grad()
def evaluate_sft(
    model: nn.Module,
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    *,
    completion_only: bool = True,
    batch_size: int = 8,
) -> float:
    """Token-mean cross-entropy of ``model`` over tokenised ``examples`` (as :func:`sft_loss`, summed over batches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for s in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in
                     collate_sft(examples[s : s + batch_size], pad_token_id, completion_only=completion_only).items()}
            n = int(batch["loss_mask"][:, 1:].sum())
            if n:
                total += float(sft_loss(lm_logits(model, batch), batch["labels"], batch["loss_mask"])) * n
                count += n
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("no target token in the evaluation examples")
    return total / count


def _max_positions(model: nn.Module) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prepare_causal_lm(cfg: Any, model: nn.Module | None, tokenizer: Any) -> tuple[nn.Module, Any]:
    """Load (or adopt) the model and tokenizer; give the tokenizer a distinct pad token, resize the embeddings,
    set the pad id in the model's configs and turn dropout off."""
    if model is None and cfg.model is None:
        raise ConfigError("model: required option is missing (a model directory)")
    if tokenizer is None:
        if cfg.model is None:
            raise ConfigError("model: required to load the tokenizer when no tokenizer object is given")
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if model is None:
        model = load_causal_lm(cfg.model, dtype=master_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code)
    ensure_pad_token(tokenizer, cfg.pad_policy)
    resize_for_tokenizer(model, tokenizer)
    vocab_check(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return disable_dropout(model), tokenizer


def _eval_records(cfg: SFTConfig, records: list[dict]) -> tuple[list[dict], list[dict]]:
    if cfg.eval_file is not None:
        return records, read_records(cfg.eval_file, "sft")
    return split_eval(records, cfg.eval_fraction, cfg.seed)


def train_sft(
    cfg: SFTConfig, *, model: nn.Module | None = None, tokenizer: Any = None, progress: bool = True,
    restart: bool = False,
) -> SFTResult:
    """Fine-tune a causal LM as ``cfg`` says and save it to ``cfg.output_dir``.

    ``model``/``tokenizer``: objects to use instead of loading ``cfg.model`` (a passed model keeps its dtype; the
    tokenizer gets a pad token added when it lacks a distinct one). ``progress``: a tqdm bar when stderr is a terminal.
    An ``output_dir`` holding checkpoints of this run is resumed (``cfg.resume``); a finished one is returned as it is;
    ``restart=True`` discards an earlier run there. Raises ``DataError``/``ConfigError``/``ModelError`` with a one-line
    message for bad data, options or models, ``TrainingError`` after ``max_consecutive_skips`` non-finite steps, and
    ``Preempted`` after a SIGTERM/Ctrl-C checkpoint.
    """
    check_stage_trackers(cfg)  # a tracker that is not installed: one line, before anything loads
    out_dir = Path(cfg.output_dir)
    dist = setup_dist(cfg.device, shards=True)  # the device; under torchrun the processes (tether.engine.dist)
    sharded = sharding_plan(cfg.sharding, dist)  # fsdp under several processes
    run = stage_run_dir(cfg, restart=restart, dist=dist)
    if run.finished:
        return _finished(out_dir)
    set_seed(cfg.seed)
    model, tokenizer = prepare_causal_lm(cfg, model, tokenizer)
    model = master_weights(model)  # float32 weights and AdamW state; dtype=bfloat16 computes under autocast
    if cfg.gradient_checkpointing:  # acts in the training forwards: the loop trains in train mode, dropout off
        enable_checkpointing(model)
    device = dist.device
    model.to(device)
    if sharded:  # FSDP2: each process keeps its shard of the weights, gradients and AdamW state
        shard(model)
    max_length = cfg.max_length
    limit = _max_positions(model)
    if limit is not None and max_length > limit:
        log.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
        max_length = limit

    # 1. data: validate, split, tokenise (prompt tokens masked, one EOS), pack
    train_records, eval_records = _eval_records(cfg, read_records(cfg.train_file, "sft"))
    adopt_chat_template(tokenizer, train_records + eval_records)  # chat data, no template: save the one used
    completion_only = cfg.completion_only_loss
    train_ex, counts = tokenize_sft_records(train_records, tokenizer, max_length=max_length,
                                            completion_only=completion_only)
    if not train_ex:
        raise DataError(f"{cfg.train_file}: no example keeps a target token within max_length={max_length}")
    if counts["truncated"] or counts["dropped"]:
        log.warning("%s: %d examples truncated to %d tokens, %d dropped (no target token left)",
                    cfg.train_file, counts["truncated"], max_length, counts["dropped"])
    eval_ex = tokenize_sft_records(eval_records, tokenizer, max_length=max_length,
                                   completion_only=completion_only)[0] if eval_records else []
    rows = pack_sft(train_ex, max_length) if cfg.packing else train_ex

    # 2. schedule and the run: fresh, or continued from a checkpoint
    r = start_offline_run(run, cfg, model, len(rows), "sft", dist=dist, sharded=sharded)
    loop, scheduler, total_steps, groups = r.loop, r.scheduler, r.total_steps, r.groups
    pad_id = tokenizer.pad_token_id
    model.train()

    # 3. optimise: one optimizer step over the next grad_accum micro-batches (this process's share of each), the
    #    loss divided by the target tokens of the whole step over all processes (gradients are summed over them)
    def step() -> None:
        epoch, g, group, n_micro = next(groups)
        planned = [({k: v.to(device) for k, v in
                     collate_sft([rows[i] for i in mb], pad_id, completion_only=completion_only).items()}, counts)
                   for mb, counts in r.micro_batches(group)]
        batches = [b for b, counts in planned if counts]
        n_tokens = int(dist.sum([sum(int(b["loss_mask"][:, 1:].sum()) for b in batches)])[0])
        step_loss, finite = 0.0, True
        for b, counts in planned:
            with compute_context(cfg.dtype, device):
                logits = lm_logits(model, b)
            loss = sft_loss(logits, b["labels"], b["loss_mask"], num_tokens=n_tokens)
            if not counts:  # a sharded model's filler row (OfflineRun.micro_batches): in step, weight 0
                loss = loss * 0.0
            elif not bool(torch.isfinite(loss.detach())):  # NaN/Inf guard: no backward, the step is skipped
                finite = False
                if not sharded:
                    break  # sharded: the backward still runs (FSDP's collectives); the ranks skip the step together
            loss.backward()
            step_loss += float(loss.detach()) if counts and finite else 0.0
        lr = scheduler.get_last_lr()[0]
        norm, stepped = offline_step(r, finite)
        step_loss = dist.sum([step_loss])[0] if stepped else step_loss
        if stepped:
            loop.extra["train_loss"] = step_loss
        bar_loss["loss"] = f"{step_loss:.4f}"
        record: dict[str, Any] = {}
        last = loop.step == total_steps
        if loop.step % cfg.log_every == 0 or last or not stepped:
            record |= {"step": loop.step, "epoch": epoch + (g + len(batches)) / max(1, n_micro),
                       "loss": step_loss if stepped else float("nan"), "lr": lr, "grad_norm": float(norm),
                       "tokens": n_tokens, "time/elapsed_s": round(loop.elapsed(), 3)}
            if not stepped:
                record["skipped"] = 1
        if eval_ex and ((cfg.eval_every and loop.step % cfg.eval_every == 0) or last):
            loop.extra["eval_loss"] = evaluate_sft(model, eval_ex, pad_id, completion_only=completion_only,
                                                   batch_size=cfg.eval_batch_size)
            record |= {"step": loop.step, "eval_loss": loop.extra["eval_loss"]}
        loop.log(record)

    bar_loss: dict[str, str] = {}
    bar = progress_bar(total=total_steps, enabled=progress and dist.is_main, desc="sft", every=cfg.log_every)
    loop.run(step, bar, postfix=lambda: bar_loss)
    model.eval()

    # 4. save (the main process; the others wait until the model is there; a sharded one is gathered first)
    weights = full_weights(model) if sharded else None
    if dist.is_main:
        save_model_atomic(model, tokenizer, out_dir, extra_files={"tether_config.yaml": dump(cfg),
                                                                  "README.md": model_card("sft", cfg, loop.history)},
                          keep=("metrics.jsonl", "checkpoints", *STAGE_LOG_FILES), state_dict=weights)
    loop.monitor.close()
    dist.barrier()
    return SFTResult(output_dir=out_dir, eval_loss=loop.extra.get("eval_loss"),
                     train_loss=loop.extra.get("train_loss"), steps=loop.step, metrics=loop.history)


def _finished(out_dir: Path) -> SFTResult:
    """The result of a run that had already finished (read back from its metrics.jsonl)."""
    note(f"{out_dir} holds the finished run; nothing to do")
    metrics = read_jsonl(out_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    evals = [m["eval_loss"] for m in metrics if m.get("eval_loss") is not None]
    return SFTResult(output_dir=out_dir, eval_loss=evals[-1] if evals else None,
                     train_loss=losses[-1] if losses else None,
                     steps=max((m.get("step", 0) for m in metrics), default=0), metrics=metrics)
