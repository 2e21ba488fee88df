"""Direct preference optimisation (DPO, or IPO with ``loss_type: ipo``) on preference pairs, on the offline stages' run
machinery (checkpoints, exact resume, metrics.jsonl, held-out evaluation with best/, report, model card).

The loop, step by step:
1. load the model and tokenizer as SFT does (a distinct pad token, dropout off); the policy is the model, the frozen
   reference its copy — or, with ``precompute_ref_logprobs``, no copy: the starting model scores every pair once
   before the first step (``reference_logps.safetensors`` in output_dir, copied into each checkpoint, so a resumed
   run reads them back instead of scoring with the moved policy);
2. read and validate the pairs (the files ``tether rm`` reads), hold out an eval split, tokenise each side as SFT
   would (:mod:`tether.data.dpo`);
3. each optimizer step: chosen and rejected of ``batch_size`` pairs in one forward; the sequence log-probability of
   each completion (completion tokens only); :func:`tether.ops.dpo_loss` (``kind`` sigmoid or ipo) against the
   reference's; clip, step, schedule, log;
4. evaluate on the held-out pairs every ``eval_every`` steps and at the end; the lowest held-out loss is saved to
   ``best/``; the end of the run saves ``final/`` (``save_pretrained``, tokenizer, config, model card).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tether import ops
from tether.algos.common import split_eval
from tether.algos.offline import offline_step, start_offline_run
from tether.algos.sft import prepare_causal_lm
from tether.config.base import dump
from tether.config.dpo import DPOConfig
from tether.console import note, progress as progress_bar
from tether.data.dpo import collate_dpo, tokenize_dpo_pairs
from tether.data.readers import adopt_chat_template, read_records
from tether.engine.checkpoint import atomic_write_bytes
from tether.engine.optim import set_seed
from tether.engine.outputs import save_model_atomic
from tether.engine.dist import setup as setup_dist, world_size_from_env
from tether.engine.run_dir import DPO_REF_FILE as REF_FILE, read_jsonl, stage_run_dir
from tether.errors import ConfigError, DataError
from tether.eval.heldout import BestTracker
from tether.models.card import model_card
from tether.models.forward import causal_lm_logits
from tether.models.lora import AdapterOffReference, AdapterSave, wrap_lora
from tether.models.precision import compute_context, master_weights
from tether.monitor.trackers import check_stage_trackers

log = logging.getLogger(__name__)

BEST_METRIC = "eval/loss"


@dataclass
class DPOResult:
    """What ``train_dpo`` produced."""

    output_dir: Path
    """The saved policy (``output_dir/final``)."""
    best_dir: Path | None
    """The policy with the lowest held-out loss (``output_dir/best``); None without held-out pairs."""
    eval_loss: float | None
    """Held-out DPO/IPO loss after the last step (None without held-out pairs)."""
    eval_accuracy: float | None
    """Share of held-out pairs whose implicit reward ranks chosen above rejected (ties are wrong), after the last
    step."""
    train_loss: float | None
    """Loss of the last optimizer step."""
    steps: int
    """Optimizer steps taken."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Every record written to ``metrics.jsonl``."""


# --------------------------------------------------------------------------------------------- scoring


def sequence_logps(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Summed log-probabilities of the completion tokens of each row: ``Σ_{t ≥ 1, mask[t]} log p(ids[t] | ids < t)``.

    Shapes: ``input_ids``, ``attention_mask``, ``completion_mask`` (B, L) → (B,) float32. The first token is never
    scored (nothing predicts it); pads are never read.
    """
    ids = batch["input_ids"]
    logits = causal_lm_logits(model, ids, batch["attention_mask"])
    lp = ops.logprobs_from_logits(logits[:, :-1], ids[:, 1:])
    mask = batch["completion_mask"][:, 1:].bool()
    return torch.where(mask, lp, torch.zeros_like(lp)).sum(-1)


def _to(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def pair_logps(model: nn.Module, examples: Sequence[dict[str, Any]], pad_token_id: int, *, dtype: str = "float32",
               batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) sequence log-probabilities of ``model``, each (N,) float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device  # also for a parameter-free adapter-off view
    chosen, rejected = [], []
    try:
        for s in range(0, len(examples), batch_size):
            b = _to(collate_dpo(examples[s : s + batch_size], pad_token_id), device)
            with compute_context(dtype, device):
                lp = sequence_logps(model, b).float().cpu()
            n = lp.shape[0] // 2
            chosen.append(lp[:n])
            rejected.append(lp[n:])
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_stats(cfg: DPOConfig, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The loss (a tensor, for backward) and the logged statistics of N pairs (docs/metrics.md, "DPO"): policy
    log-probs ``pc``/``pr``, reference log-probs ``rc``/``rr``, each (N,)."""
    loss, stats = ops.dpo_loss(pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                               kind=cfg.loss_type)
    with torch.no_grad():
        chosen, rejected = (pc - rc).double(), (pr - rr).double()
        out = {
            "loss": float(loss.detach()),
            "rewards/chosen": float(cfg.beta * chosen.mean()),
            "rewards/rejected": float(cfg.beta * rejected.mean()),
            "rewards/accuracy": float(stats["reward_accuracy"]),
            "rewards/margin": float(stats["reward_margin"]),
            "logps/chosen": float(pc.detach().double().mean()),
            "logps/rejected": float(pr.detach().double().mean()),
            "logratio/mean": float(torch.cat([chosen, rejected]).mean()),
        }
    return loss, out


# --------------------------------------------------------------------------------------------- the reference


def _save_ref(path: Path, ref: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in ref.items()}))


def _load_ref(path: Path, n_train: int, n_eval: int) -> dict[str, Tensor] | None:
    from safetensors.torch import load

    if not path.is_file():
        return None
    ref = load(path.read_bytes())
    if ref.get("train_chosen") is None or ref["train_chosen"].numel() != n_train or (
            n_eval and ref.get("eval_chosen", torch.empty(0)).numel() != n_eval):
        return None
    return ref


class _HeldOut:
    """The held-out evaluation as the run loop calls it (``tether.engine.loop.HeldOut``): due every ``every`` steps
    and at the last; the best is the lowest ``eval/loss``."""

    def __init__(self, evaluate: Callable[[], dict[str, float]], every: Optional[int], total: int):
        self.evaluate, self.every, self.total = evaluate, every, total
        self.best = BestTracker(BEST_METRIC, "min")

    def due(self, step: int) -> bool:
        return bool(self.every and step % self.every == 0) or step == self.total

    def __call__(self) -> dict[str, float]:
        return self.evaluate()

    def is_best(self, record: Mapping[str, Any]) -> bool:
        return self.best.update(record)


# --------------------------------------------------------------------------------------------- training


def _read_pairs(source: Any) -> list[dict]:
    return read_records(source, "preference")


def train_dpo(
    cfg: DPOConfig, *, model: nn.Module | None = None, tokenizer: Any = None, progress: bool = True,
    restart: bool = False,
) -> DPOResult:
    """Train a policy with DPO (or IPO) as ``cfg`` says and save it to ``cfg.output_dir/final`` (and ``best/``).

    ``model``/``tokenizer``: objects to use instead of loading ``cfg.model`` (the reference is a frozen copy of the
    model as passed). ``progress``: a tqdm bar when stderr is a terminal. An ``output_dir`` holding checkpoints of this
    run is resumed (``cfg.resume``); a finished one is returned as it is; ``restart=True`` discards an earlier run
    there. Bad data, options or models raise ``DataError``/``ConfigError``/``ModelError`` with one line; non-finite
    steps raise ``TrainingError`` after ``max_consecutive_skips`` in a row; SIGTERM/Ctrl-C checkpoints and raises
    ``Preempted``.
    """
    check_stage_trackers(cfg)  # a tracker that is not installed: one line, before anything loads
    out_dir = Path(cfg.output_dir)
    if world_size_from_env() > 1:
        raise ConfigError("dpo: not available on several processes yet (torchrun/accelerate launch); run it as one "
                          "process")
    run = stage_run_dir(cfg, restart=restart)
    if run.finished:
        return _finished(out_dir)
    set_seed(cfg.seed)

    # 1. data first (a bad record fails before a model is loaded), then the models
    all_train = _read_pairs(cfg.train_file)
    if cfg.eval_file is not None:
        train_records, eval_records = all_train, _read_pairs(cfg.eval_file)
    else:
        train_records, eval_records = split_eval(all_train, cfg.eval_fraction, cfg.seed)
    model, tokenizer = prepare_causal_lm(cfg, model, tokenizer)
    model = master_weights(model)  # float32 weights and AdamW state; dtype=bfloat16 computes under autocast
    device = setup_dist(cfg.device).device
    model.to(device)
    max_length = cfg.max_length
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if isinstance(limit, int) and 0 < limit < max_length:
        log.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
        max_length = limit
    adopt_chat_template(tokenizer, all_train + eval_records)  # chat pairs, no template: save the one used
    pad_id = tokenizer.pad_token_id

    def tok(records: list[dict]) -> list[dict]:
        examples, cut = tokenize_dpo_pairs(records, tokenizer, max_length=max_length,
                                           max_prompt_length=cfg.max_prompt_length)
        if cut:
            log.warning("%d of %d pairs are longer than max_length=%d (or their prompt than max_prompt_length=%s) "
                        "and were truncated", cut, len(records), max_length, cfg.max_prompt_length)
        return examples

    train_ex = tok(train_records)
    eval_ex = tok(eval_records) if eval_records else []
    adapter = None  # with policy_lora: the peft wrapper; the reference is then the policy with its adapter off
    if cfg.policy_lora is not None:
        adapter = wrap_lora(model, cfg.policy_lora)  # a model that already carries one: ModelError, one line
    base_view = AdapterOffReference(adapter) if adapter is not None else None
    reference: nn.Module | None = None
    if not cfg.precompute_ref_logprobs:
        reference = base_view or copy.deepcopy(model).eval().requires_grad_(False)
    ref: dict[str, Tensor] = {}  # precomputed (or, with the live reference, the held-out pairs' scores, once)

    def score_ref(examples: list[dict], scorer: nn.Module) -> tuple[Tensor, Tensor]:
        return pair_logps(scorer, examples, pad_id, dtype=cfg.dtype, batch_size=cfg.eval_batch_size)

    def evaluate() -> dict[str, float]:
        if "eval_chosen" not in ref:
            assert reference is not None
            ref["eval_chosen"], ref["eval_rejected"] = score_ref(eval_ex, reference)
        pc, pr = score_ref(eval_ex, model)
        _, stats = pair_stats(cfg, pc, pr, ref["eval_chosen"], ref["eval_rejected"])
        loop.extra["eval"] = stats
        return {f"eval/{k}": v for k, v in stats.items()}

    # 2. schedule and the run: fresh, or continued from a checkpoint
    heldout = _HeldOut(evaluate, cfg.eval_every, 0) if eval_ex else None

    saved = model if adapter is None else AdapterSave(adapter, tokenizer, merged=cfg.policy_lora.merge_on_save)

    def save_best() -> None:
        _save(saved, tokenizer, cfg, out_dir / "best", loop.history)

    r = start_offline_run(run, cfg, model, len(train_ex), "dpo", heldout=heldout,
                          save_best=save_best if heldout is not None else None)
    loop, scheduler, total_steps, groups = r.loop, r.scheduler, r.total_steps, r.groups
    if heldout is not None:
        heldout.total = total_steps
    if cfg.precompute_ref_logprobs:
        found = None if loop.fresh else _load_ref(out_dir / REF_FILE, len(train_ex), len(eval_ex))
        if found is None:
            if not loop.fresh:
                raise DataError(f"{out_dir / REF_FILE}: the precomputed reference log-probabilities of this run are "
                                "missing or do not match the data; start over in a new output_dir")
            note(f"scoring {len(train_ex) + len(eval_ex)} pairs with the reference (precompute_ref_logprobs)")
            found = {}
            start = base_view or model  # the starting model: with LoRA, the adapter switched off
            found["train_chosen"], found["train_rejected"] = score_ref(train_ex, start)
            if eval_ex:
                found["eval_chosen"], found["eval_rejected"] = score_ref(eval_ex, start)
            _save_ref(out_dir / REF_FILE, found)
        ref.update(found)
    model.train()

    # 3. optimise: chosen and rejected of each micro-batch in one forward, one optimizer step per group
    def step() -> None:
        epoch, g, group, n_micro = next(groups)
        n_pairs = sum(len(mb) for mb in group)
        acc: dict[str, float] = {}
        finite = True
        for mb in group:
            b = _to(collate_dpo([train_ex[i] for i in mb], pad_id), device)
            with compute_context(cfg.dtype, device):
                lp = sequence_logps(model, b).float()
            n = lp.shape[0] // 2
            if reference is not None:
                with torch.no_grad(), compute_context(cfg.dtype, device):
                    rl = sequence_logps(reference, b).float()
                rc, rr = rl[:n], rl[n:]
            else:
                idx = torch.tensor(mb)
                rc, rr = ref["train_chosen"][idx].to(device), ref["train_rejected"][idx].to(device)
            loss, stats = pair_stats(cfg, lp[:n], lp[n:], rc, rr)
            if not bool(torch.isfinite(loss.detach())):  # NaN/Inf guard: no backward, the step is skipped
                finite = False
                break
            w = n / n_pairs
            (loss * w).backward()
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v * w
        lr = scheduler.get_last_lr()[0]
        norm, stepped = offline_step(r, finite)
        if stepped:
            loop.extra["train_loss"] = acc["loss"]
        bar_text.update(loss=f"{acc.get('loss', float('nan')):.4f}", acc=f"{acc.get('rewards/accuracy', 0):.2f}")
        last = loop.step == total_steps
        record: dict[str, Any] = {}
        if (loop.step % cfg.log_every == 0 or last or not stepped
                or (heldout is not None and heldout.due(loop.step))):
            record = {"step": loop.step, "epoch": epoch + (g + len(group)) / max(1, n_micro), **acc,
                      "lr": lr, "grad_norm": norm, "time/elapsed_s": round(loop.elapsed(), 3)}
            if not stepped:
                record["loss"] = float("nan")
                record["skipped"] = 1
        loop.log(record)

    bar_text: dict[str, str] = {}
    bar = progress_bar(total=total_steps, enabled=progress, desc="dpo", every=cfg.log_every)
    loop.run(step, bar, postfix=lambda: bar_text)
    model.eval()

    # 4. save final/ (best/ was saved when its evaluation came)
    _save(saved, tokenizer, cfg, out_dir / "final", loop.history)
    loop.monitor.close()
    ev = loop.extra.get("eval") or {}
    best = out_dir / "best"
    return DPOResult(output_dir=out_dir / "final", best_dir=best if best.is_dir() else None,
                     eval_loss=ev.get("loss"), eval_accuracy=ev.get("rewards/accuracy"),
                     train_loss=loop.extra.get("train_loss"), steps=loop.step, metrics=loop.history)


def _save(model: Any, tokenizer: Any, cfg: DPOConfig, where: Path, history: list[dict]) -> None:
    """``model``: the policy, or with ``policy_lora`` its :class:`AdapterSave` (the adapter, and merged/ on request)."""
    save_model_atomic(model, tokenizer, where, extra_files={"tether_config.yaml": dump(cfg),
                                                            "README.md": model_card("dpo", cfg, history)}, keep=())


def _finished(out_dir: Path) -> DPOResult:
    """The result of a run that had already finished (read back from its metrics.jsonl)."""
    note(f"{out_dir / 'final'} holds the finished run; nothing to do")
    metrics = read_jsonl(out_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    evals = [m for m in metrics if m.get("eval/loss") is not None]
    best = out_dir / "best"
    return DPOResult(output_dir=out_dir / "final", best_dir=best if best.is_dir() else None,
                     eval_loss=evals[-1]["eval/loss"] if evals else None,
                     eval_accuracy=evals[-1].get("eval/rewards/accuracy") if evals else None,
                     train_loss=losses[-1] if losses else None,
                     steps=max((m.get("step", 0) for m in metrics), default=0), metrics=metrics)
