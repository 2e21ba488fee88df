"""Reward-model training: Bradley–Terry on preference pairs, pair accuracy (overall and per group), then the score is
shifted (and optionally scaled) so reference completions average 0, with the map folded into the weights.

The loop, step by step:
1. load a 1-output sequence classifier (decoder: score read at the EOS; encoder: pooled [CLS]); fresh heads get
   N(0, 1/√(d+1)), bias 0 (ppo_details.md C1); dropout off;
2. read and validate the pairs, hold out an eval split, tokenise (decoders: prompt + completion + one EOS);
3. each optimizer step: chosen and rejected of ``batch_size`` pairs in one forward (C3), loss
   ``mean(−log σ(r_c − r_r − m))`` over the step's pairs, clip, step, schedule, log;
4. evaluate: loss and accuracy (a tie counts as wrong), per group when the data has a group column;
5. normalise on the reference completions (C5): fold ``s ↦ (s − μ)/σ`` (or ``s − μ``) into the model, check it,
   write ``tether_rm.json``; save atomically in ``save_pretrained`` format.

Checkpoints every ``checkpoint_every`` steps and after the last (before step 5) let a re-run resume exactly
(docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tether.algos.common import split_eval
from tether.algos.offline import offline_step, start_offline_run
from tether.console import note, progress as progress_bar
from tether.engine.dist import setup as setup_dist
from tether.engine.optim import set_seed
from tether.engine.outputs import MetricsWriter, save_model_atomic
from tether.engine.run_dir import read_jsonl, stage_run_dir
from tether.engine.sharding import full_weights, plan as sharding_plan, shard
from tether.monitor.logger import STAGE_LOG_FILES
from tether.monitor.trackers import check_stage_trackers
from tether.config.base import dump
from tether.config.rm import RMConfig
from tether.data.preferences import collate_pairs, encode_for_reward, pad_right, tokenize_pairs
from tether.data.readers import adopt_chat_template, read_records
from tether.errors import ConfigError, DataError, ModelError
from tether.models.load import (
    disable_dropout,
    ensure_pad_token,
    init_score_head,
    load_tokenizer,
    resolve_model,
    resize_for_tokenizer,
    vocab_check,
)
from tether.models.card import model_card
from tether.models.checkpointing import enable_checkpointing
from tether.models.precision import compute_context, master_dtype, master_weights
from tether.models.scalar import (
    card_notes,
    fold_score_affine,
    is_decoder_scorer,
    reward_input_style,
    score_head,
    sequence_scores,
)
from tether.ops.losses import bradley_terry_loss

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("score.", "classifier.")


@dataclass
class RMResult:
    """What ``train_rm`` produced."""

    output_dir: Path
    """The saved reward-model directory."""
    accuracy: float | None
    """Pair accuracy on the held-out split (chosen scored strictly higher), after normalisation; None without eval."""
    group_accuracy: dict[str, float]
    """Held-out accuracy per value of the group column (empty without one)."""
    eval_loss: float | None
    """Bradley–Terry loss on the held-out split (without margins)."""
    normalization: dict[str, Any] | None
    """The statistics written to tether_rm.json (mean, std, n, file, …); None with ``normalize: none``."""
    steps: int
    """Optimizer steps taken."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Every record written to ``metrics.jsonl``."""


# --------------------------------------------------------------------------------------------- model


def load_reward_backbone(path: str | Path, dtype: torch.dtype = torch.float32,
                         trust_remote_code: bool = False) -> tuple[nn.Module, bool]:
    """``AutoModelForSequenceClassification(num_labels=1)`` from a local directory (safetensors only).

    Returns (model, head_is_new): True when the checkpoint held no trained score head (a causal LM or an encoder
    backbone), so the head must be initialised.
    """
    from transformers import AutoModelForSequenceClassification

    p = resolve_model(path, "reward model backbone")  # a directory or a cached Hub name; safetensors weights
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(p), num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
            output_loading_info=True,
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelError(f"{p}: cannot load as a sequence classifier ({type(err).__name__}: {first})") from None
    if model.config.num_labels != 1:
        raise ModelError(f"{p}: a reward model needs exactly 1 output label, found {model.config.num_labels}")
    missing = info.get("missing_keys", ()) or ()
    return model, any(str(k).startswith(HEAD_PREFIXES) for k in missing)


def prepare_reward_model(cfg: RMConfig, model: nn.Module | None, tokenizer: Any) -> tuple[nn.Module, Any]:
    """Load (or adopt) the reward model and tokenizer; initialise the head as ``cfg.init_head`` says; pad token for
    decoders (distinct from EOS); dropout off."""
    if model is None and cfg.model is None:
        raise ConfigError("model: required option is missing (a backbone directory)")
    if tokenizer is None:
        if cfg.model is None:
            raise ConfigError("model: required to load the tokenizer when no tokenizer object is given")
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    head_is_new = False
    if model is None:
        model, head_is_new = load_reward_backbone(cfg.model, master_dtype(cfg.dtype), cfg.trust_remote_code)
    try:
        head = score_head(model)
    except ValueError as err:
        raise ModelError(f"{cfg.model or type(model).__name__}: {err}") from None
    if cfg.init_head == "always" or (cfg.init_head == "auto" and head_is_new):
        init_score_head(head)
    if is_decoder_scorer(model):
        ensure_pad_token(tokenizer, cfg.pad_policy)
        resize_for_tokenizer(model, tokenizer)
        vocab_check(model, tokenizer, "reward model")
        model.config.pad_token_id = tokenizer.pad_token_id
    elif tokenizer.pad_token_id is None:
        raise ModelError("the encoder's tokenizer has no pad token")
    return disable_dropout(model), tokenizer


def _max_positions(model: nn.Module) -> int | None:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------------------------- evaluation


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def pair_scores(model: nn.Module, examples: Sequence[dict[str, Any]], pad_token_id: int,
                batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """(chosen scores, rejected scores), each (N,) float32, for tokenised pairs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    try:
        for s in range(0, len(examples), batch_size):
            b = _to(collate_pairs(examples[s : s + batch_size], pad_token_id), device)
            scores = sequence_scores(model, b["input_ids"], b["attention_mask"]).cpu()
            n = scores.shape[0] // 2
            chosen.append(scores[:n])
            rejected.append(scores[n:])
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_pairs(model: nn.Module, examples: Sequence[dict[str, Any]], pad_token_id: int,
                   batch_size: int = 16) -> dict[str, Any]:
    """``{"accuracy", "loss", "n", "group_accuracy": {group: acc}, "group_n": {group: n}}`` on tokenised pairs.

    Accuracy counts a pair as right when the chosen score is strictly higher (ties are wrong); the loss is
    Bradley–Terry without margins. Pairs with no group are left out of the per-group numbers only.
    """
    chosen, rejected = pair_scores(model, examples, pad_token_id, batch_size)
    loss, stats = bradley_terry_loss(chosen, rejected)
    right = (chosen > rejected).tolist()
    by_group: dict[str, list[bool]] = defaultdict(list)
    for ex, ok in zip(examples, right):
        if ex.get("group") is not None:
            by_group[ex["group"]].append(ok)
    return {
        "accuracy": float(stats["accuracy"]),
        "loss": float(loss),
        "n": len(examples),
        "group_accuracy": {g: sum(v) / len(v) for g, v in sorted(by_group.items())},
        "group_n": {g: len(v) for g, v in sorted(by_group.items())},
    }


@torch.no_grad()
def score_completions(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any], *,
                      max_length: int, batch_size: int = 16) -> Tensor:
    """Scores of (prompt, completion) pairs encoded as in training. Shapes: N pairs → (N,) float32."""
    was_training = model.training
    model.eval()
    style = reward_input_style(model)
    device = next(model.parameters()).device
    out = []
    try:
        for s in range(0, len(prompts), batch_size):
            seqs = [encode_for_reward(tokenizer, p, c, style=style, max_length=max_length)
                    for p, c in zip(prompts[s : s + batch_size], completions[s : s + batch_size])]
            ids, mask = pad_right(seqs, tokenizer.pad_token_id)
            out.append(sequence_scores(model, ids.to(device), mask.to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- normalisation


def reference_completions(cfg: RMConfig, train_records: list[dict]) -> tuple[list, list, str]:
    """(prompts, completions, description) of the normalisation set: ``cfg.normalize_file`` — preference pairs
    (their ``chosen``) or prompt/completion records (chat ``messages``: the last assistant turn) — else the chosen
    completions of the training pairs."""
    if cfg.normalize_file is None:
        return ([r["prompt"] for r in train_records], [r["chosen"] for r in train_records],
                f"{cfg.train_file} (chosen completions of the training pairs)")
    raw = read_records(cfg.normalize_file)
    if any("chosen" in r for r in raw):
        recs = read_records(cfg.normalize_file, "preference")
        return [r["prompt"] for r in recs], [r["chosen"] for r in recs], f"{cfg.normalize_file} (chosen)"
    prompts, completions = [], []
    for r in read_records(cfg.normalize_file, "sft"):
        if "messages" in r:
            msgs = r["messages"]
            k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            prompts.append(msgs[:k])
            completions.append([msgs[k]])
        elif "completion" in r:
            prompts.append(r["prompt"])
            completions.append(r["completion"])
        else:
            prompts.append("")
            completions.append(r["text"])
    if any(isinstance(p, list) and not p for p in prompts):
        raise DataError(f"{cfg.normalize_file}: a conversation starts with its assistant turn; add the user turn")
    return prompts, completions, str(cfg.normalize_file)


def normalize_reward_model(model: nn.Module, scores: Tensor, mode: str) -> dict[str, Any]:
    """Fold ``s ↦ s − μ`` (``shift``) or ``s ↦ (s − μ)/σ`` (``shift_scale``) into ``model``, where μ, σ are the mean
    and population std of ``scores`` (the reference completions' scores). Returns the statistics."""
    s = scores.double()
    mean, std = float(s.mean()), float(s.std(unbiased=False)) if s.numel() > 1 else 0.0
    if mode == "shift_scale":
        if not std > 1e-8:
            raise DataError("the reference completions all get the same score (std 0); use normalize: shift")
        scale, shift = 1.0 / std, -mean / std
    elif mode == "shift":
        scale, shift = 1.0, -mean
    else:
        raise ValueError(f"unknown normalize mode {mode!r}")
    where = fold_score_affine(model, scale=scale, shift=shift)
    return {"mode": mode, "mean": mean, "std": std, "n": int(s.numel()), "scale": scale, "shift": shift,
            "folded_into": where}


# --------------------------------------------------------------------------------------------- training


def _read_pairs(cfg: RMConfig, path: str, group_required: bool) -> list[dict]:
    required = (cfg.group_column,) if group_required and cfg.group_column else ()
    numeric = (cfg.margin_column,) if cfg.margin_column else ()
    return read_records(path, "preference", required=required, numeric=numeric)


def _count_truncated(records: list[dict], examples: list[dict], tokenizer: Any, style: str, max_length: int) -> int:
    """How many pairs lost tokens to ``max_length`` (re-encoded without the limit only when they reach it)."""
    n = 0
    for rec, ex in zip(records, examples):
        for key in ("chosen", "rejected"):
            if len(ex[f"{key}_ids"]) >= max_length and len(encode_for_reward(
                    tokenizer, rec["prompt"], rec[key], style=style, max_length=1 << 20)) > max_length:
                n += 1
                break
    return n


def train_rm(
    cfg: RMConfig, *, model: nn.Module | None = None, tokenizer: Any = None, progress: bool = True,
    restart: bool = False,
) -> RMResult:
    """Train a reward model as ``cfg`` says, normalise it, and save it to ``cfg.output_dir``.

    ``model``/``tokenizer``: objects to use instead of loading ``cfg.model`` (a passed model keeps its head unless
    ``init_head: always``; a decoder's tokenizer gets a distinct pad token). ``progress``: a tqdm bar when stderr is a
    terminal. Bad data, options or models raise ``DataError``/``ConfigError``/``ModelError`` with one line.
    An ``output_dir`` holding checkpoints of this run is resumed (``cfg.resume``); a finished one is returned as it is;
    ``restart=True`` discards an earlier run there. Non-finite steps raise ``TrainingError`` after
    ``max_consecutive_skips`` in a row; SIGTERM/Ctrl-C checkpoints and raises ``Preempted``.
    """
    check_stage_trackers(cfg)  # a tracker that is not installed: one line, before anything loads
    out_dir = Path(cfg.output_dir)
    dist = setup_dist(cfg.device, shards=True)  # the device; under torchrun the processes (tether.engine.dist)
    sharded = sharding_plan(cfg.sharding, dist)  # fsdp under several processes
    run = stage_run_dir(cfg, restart=restart, dist=dist)
    if run.finished:
        return _finished(out_dir)
    set_seed(cfg.seed)
    model, tokenizer = prepare_reward_model(cfg, model, tokenizer)
    model = master_weights(model)  # float32 weights and AdamW state; dtype=bfloat16 computes under autocast
    if cfg.gradient_checkpointing:  # acts in the training forwards: the loop trains in train mode, dropout off
        enable_checkpointing(model)
    style = reward_input_style(model)
    device = dist.device
    model.to(device)
    if sharded:  # FSDP2 (tether.engine.sharding); a decoder's score head is applied outside its backbone's forward
        shard(model, root=model.base_model if style == "decoder" else None)
    max_length = cfg.max_length
    limit = _max_positions(model)
    if limit is not None and max_length > limit:
        max_length = limit

    # 1. data
    group_required = cfg.group_column is not None and "group_column" in cfg.model_fields_set
    all_train = _read_pairs(cfg, cfg.train_file, group_required)
    if cfg.eval_file is not None:
        train_records, eval_records = all_train, _read_pairs(cfg, cfg.eval_file, group_required)
    else:
        train_records, eval_records = split_eval(all_train, cfg.eval_fraction, cfg.seed)
    pad_id = tokenizer.pad_token_id
    adopt_chat_template(tokenizer, all_train)  # chat pairs, no template: save the one the scores were trained on

    def tok(records: list[dict]) -> list[dict]:
        return tokenize_pairs(records, tokenizer, style=style, max_length=max_length,
                              margin_column=cfg.margin_column, group_column=cfg.group_column)

    train_ex, eval_ex = tok(train_records), tok(eval_records) if eval_records else []
    cut = _count_truncated(train_records, train_ex, tokenizer, style, max_length)
    if cut:
        how = "prompt tokens dropped from the left first" if style == "decoder" else "longest-first"
        log.warning("%s: %d of %d pairs are longer than max_length=%d tokens and were truncated (%s)",
                    cfg.train_file, cut, len(train_ex), max_length, how)

    # 2. schedule and the run: fresh, or continued from a checkpoint
    r = start_offline_run(run, cfg, model, len(train_ex), "rm", dist=dist, sharded=sharded)
    loop, scheduler, total_steps, groups = r.loop, r.scheduler, r.total_steps, r.groups
    model.train()

    # 3. optimise: chosen and rejected of each micro-batch in one forward, one optimizer step per group (this
    #    process's share of each micro-batch; weights over the step's pairs of all processes, gradients summed)
    def step() -> None:
        epoch, g, group, n_micro = next(groups)
        n_pairs = sum(len(mb) for mb in group)
        step_loss, step_acc, step_margin, finite = 0.0, 0.0, 0.0, True
        for mb, counts in r.micro_batches(group):
            b = _to(collate_pairs([train_ex[i] for i in mb], pad_id), device)
            with compute_context(cfg.dtype, device):
                scores = sequence_scores(model, b["input_ids"], b["attention_mask"]).float()
            n = scores.shape[0] // 2
            margin = b["margin"] if cfg.margin_column else None
            loss, stats = bradley_terry_loss(scores[:n], scores[n:], margin)
            w = n / n_pairs if counts else 0.0  # 0: a sharded model's filler row (OfflineRun.micro_batches)
            if counts and not bool(torch.isfinite(loss.detach())):  # NaN/Inf guard: the step is skipped
                finite = False
                if not sharded:
                    break  # sharded: the backward still runs (FSDP's collectives); the ranks skip the step together
            (loss * w).backward()
            if not (counts and finite):
                continue
            step_loss += float(loss.detach()) * w
            step_acc += float(stats["accuracy"]) * w
            step_margin += float(stats["margin"]) * w
        lr = scheduler.get_last_lr()[0]
        norm, stepped = offline_step(r, finite)
        if stepped:
            step_loss, step_acc, step_margin = dist.sum([step_loss, step_acc, step_margin])
        bar_text.update(loss=f"{step_loss:.4f}", acc=f"{step_acc:.2f}")
        last = loop.step == total_steps
        record: dict[str, Any] = {}
        if loop.step % cfg.log_every == 0 or last or not stepped:
            record |= {"step": loop.step, "epoch": epoch + (g + len(group)) / max(1, n_micro),
                       "loss": step_loss if stepped else float("nan"), "accuracy": step_acc,
                       "margin": step_margin, "lr": lr, "grad_norm": norm,
                       "time/elapsed_s": round(loop.elapsed(), 3)}
            if not stepped:
                record["skipped"] = 1
        if eval_ex and ((cfg.eval_every and loop.step % cfg.eval_every == 0) or last):
            ev = loop.extra["ev"] = evaluate_pairs(model, eval_ex, pad_id, cfg.eval_batch_size)
            record |= {"step": loop.step, "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"]}
            record |= {f"eval_accuracy/{k}": v for k, v in ev["group_accuracy"].items()}
        loop.log(record)

    bar_text: dict[str, str] = {}
    bar = progress_bar(total=total_steps, enabled=progress and dist.is_main, desc="rm", every=cfg.log_every)
    loop.run(step, bar, postfix=lambda: bar_text)
    model.eval()
    step, ev = loop.step, loop.extra.get("ev")
    metrics = loop.history
    writer = MetricsWriter(out_dir / "metrics.jsonl", overwrite=False)

    # 4. normalise on the reference completions (C5), then check the fold kept the accuracy
    stats = None
    if cfg.normalize != "none":
        prompts, completions, source = reference_completions(cfg, all_train)
        before = score_completions(model, tokenizer, prompts, completions, max_length=max_length,
                                   batch_size=cfg.eval_batch_size)
        stats = normalize_reward_model(model, before, cfg.normalize)
        after = score_completions(model, tokenizer, prompts, completions, max_length=max_length,
                                  batch_size=cfg.eval_batch_size).double()
        stats |= {"file": source, "mean_after": float(after.mean()), "std_after": float(after.std(unbiased=False))}
        if eval_ex:
            ev_after = evaluate_pairs(model, eval_ex, pad_id, cfg.eval_batch_size)
            if ev is not None and ev_after["accuracy"] != ev["accuracy"]:
                log.warning("eval accuracy moved from %.4f to %.4f under normalisation (float rounding of near-ties)",
                            ev["accuracy"], ev_after["accuracy"])
            ev = ev_after | {"loss": ev["loss"] if ev is not None else ev_after["loss"]}
        norm_record = {"step": step, "normalization": stats}
        metrics.append(writer.write(norm_record) if dist.is_main else norm_record)

    # 5. save
    summary = {
        "normalization": stats,
        "input_style": style,
        "max_length": max_length,
        "eval": None if ev is None else {k: ev[k] for k in ("accuracy", "loss", "n", "group_accuracy", "group_n")},
    }
    weights = full_weights(model) if sharded else None  # a sharded model gathered (every process takes part)
    if dist.is_main:  # one process writes; the others wait until the model is there
        save_model_atomic(model, tokenizer, out_dir, state_dict=weights,
                          extra_files={"tether_config.yaml": dump(cfg), "tether_rm.json": summary,
                                       "README.md": model_card("rm", cfg, summary["eval"], notes=card_notes(stats))},
                          keep=("metrics.jsonl", "checkpoints", *STAGE_LOG_FILES))
    loop.monitor.close()
    dist.barrier()
    return RMResult(
        output_dir=out_dir,
        accuracy=None if ev is None else ev["accuracy"],
        group_accuracy={} if ev is None else ev["group_accuracy"],
        eval_loss=None if ev is None else ev["loss"],
        normalization=stats,
        steps=step,
        metrics=metrics,
    )


def _finished(out_dir: Path) -> RMResult:
    """The result of a run that had already finished (read back from tether_rm.json and metrics.jsonl)."""
    note(f"{out_dir} holds the finished run; nothing to do")
    try:
        summary = json.loads((out_dir / "tether_rm.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        summary = {}
    ev = summary.get("eval") or {}
    metrics = read_jsonl(out_dir / "metrics.jsonl")
    return RMResult(output_dir=out_dir, accuracy=ev.get("accuracy"), group_accuracy=ev.get("group_accuracy") or {},
                    eval_loss=ev.get("loss"), normalization=summary.get("normalization"),
                    steps=max((m.get("step", 0) for m in metrics), default=0), metrics=metrics)
