"""Evaluation during training: a fixed held-out prompt set scored with the proxy reward and independent judges, and
the choice of the best checkpoint.

:class:`HeldOutEvaluator` samples (or greedily decodes) one completion per held-out prompt with the same pure sampling
config as the rollout, under a fixed seed, so two evaluations differ only by the policy. It returns ``eval/*``
metrics: ``eval/proxy`` (the combined training reward) and ``eval/proxy/<source>``, ``eval/<judge>`` per judge,
``eval/kl`` (sequence KL to the reference at the sampling temperature, when a reference is given and completions are
sampled), ``eval/length_mean`` and ``eval/eos_fraction``. The global torch RNG is left as it was.

:class:`BestTracker` remembers the best value of one metric (``max`` or ``min``) and says when a new one is reached,
so the caller can save the ``best`` checkpoint beside the latest.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from tether import ops
from tether.data.readers import load_prompts
from tether.engine.optim import derive_seed
from tether.errors import ConfigError, RewardError
from tether.eval.judges import get_judge
from tether.records import Rollout
from tether.rewards.base import combine_scores, import_callable
from tether.rollout.generate import (encode_prompts, generate, model_device, pure_sampling, response_logprobs,
                                     sampling_config)

JudgeLike = Union[str, Callable[[list[str]], Any]]


def _judge(j: JudgeLike) -> tuple[str, Callable[[list[str]], Any]]:
    """(name, callable) of a judge given as a name (``vader``), a ``module:function`` string, or a callable."""
    if isinstance(j, str) and ":" in j:
        return j.split(":", 1)[1], import_callable(j)
    if isinstance(j, str):
        return j, get_judge(j)
    if not callable(j):
        raise TypeError(f"a judge is a name ('vader', 'textblob', 'afinn') or a callable, got {type(j).__name__}")
    return str(getattr(j, "name", None) or getattr(j, "__name__", type(j).__name__)), j


class HeldOutEvaluator:
    """Score a policy on fixed held-out prompts with the proxy reward sources and independent judges.

    ``prompts``: the held-out prompt strings (already chat-rendered); ``tokenizer``: the policy's (left padding is
    applied here); ``rewards``: ``tether.rewards.base.RewardSource`` list (the training reward; may be empty);
    ``judges``: names or callables ``texts -> floats`` (logged under their name); ``reference``: frozen reference for
    ``eval/kl`` (optional). ``greedy``: greedy decoding instead of sampling at ``temperature``.
    """

    def __init__(self, prompts: Sequence[str], tokenizer: Any, *, rewards: Sequence[Any] = (),
                 judges: Sequence[JudgeLike] = (), reference: Optional[nn.Module] = None,
                 response_length: int = 32, temperature: float = 0.7, greedy: bool = False,
                 max_prompt_length: int = 128, micro_batch_size: int = 16, seed: int = 0):
        self.prompts = [p for p in prompts]
        if not self.prompts:
            raise ConfigError("eval_prompts: the held-out prompt set is empty")
        self.tokenizer = tokenizer
        self.rewards = list(rewards)
        self.judges = dict(_judge(j) for j in judges)
        reserved = {"proxy", "kl", "sqrt_kl", "length_mean", "eos_fraction", "n"}
        clash = set(self.judges) & reserved
        if clash:
            raise ConfigError(f"judges: {sorted(clash)} is a reserved eval/ name; rename the judge")
        self.reference = reference
        self.response_length = response_length
        self.temperature = temperature
        self.greedy = greedy
        self.max_prompt_length = max_prompt_length
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.last_rows: list[dict[str, Any]] = []
        """Per-completion rows of the last evaluation (prompt, completion, proxy, per-source and judge scores)."""

    def __call__(self, policy: nn.Module) -> dict[str, float]:
        """Evaluate ``policy``; returns the ``eval/*`` metrics (means over the held-out prompts)."""
        rows: list[dict[str, Any]] = []
        kls: list[float] = []
        was_training = policy.training
        with torch.random.fork_rng(devices=[]):
            for b, start in enumerate(range(0, len(self.prompts), self.micro_batch_size)):
                texts = self.prompts[start : start + self.micro_batch_size]
                batch = encode_prompts(self.tokenizer, texts, texts, self.max_prompt_length, "left")
                torch.manual_seed(_seed(self.seed, b))
                if self.greedy:
                    rollout = _greedy(policy, self.tokenizer, batch, self.response_length, self.micro_batch_size)
                else:
                    rollout, _ = generate(policy, self.tokenizer, batch, response_length=self.response_length,
                                          temperature=self.temperature, stop_at_eos=True,
                                          micro_batch_size=self.micro_batch_size)
                if self.reference is not None and not self.greedy:
                    with torch.no_grad():
                        ref = response_logprobs(self.reference, rollout.query_response, rollout.attention_mask,
                                                rollout.query_length, self.temperature, self.micro_batch_size)
                    m = rollout.response_mask
                    kls.extend(torch.where(m, rollout.logprobs - ref.float(), 0.0).sum(1).tolist())
                batch_rows = [{"prompt": p, "completion": c, "tokens": int(n), "has_eos": bool(e)}
                              for p, c, n, e in zip(rollout.prompts, rollout.completions,
                                                    rollout.response_mask.sum(1).tolist(), rollout.has_eos.tolist())]
                if self.rewards:
                    total, parts = combine_scores(self.rewards, rollout.prompts, rollout.completions, rollout)
                    for i, r in enumerate(batch_rows):
                        r["proxy"] = float(total[i])
                        r.update({f"proxy/{k}": float(v[i]) for k, v in parts.items()})
                rows.extend(batch_rows)
        policy.train(was_training)
        comps = [r["completion"] for r in rows]
        for name, fn in self.judges.items():
            scores = [float(s) for s in fn(comps)]
            if len(scores) != len(rows):
                raise RewardError(f"judge {name!r}: returned {len(scores)} scores for {len(rows)} completions")
            for r, s in zip(rows, scores):
                r[name] = s
        self.last_rows = rows
        out: dict[str, float] = {"eval/n": float(len(rows))}
        keys = [k for k in rows[0] if k not in ("prompt", "completion", "has_eos", "tokens")] if rows else []
        for k in keys:
            vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if vals:
                out[f"eval/{k}"] = sum(vals) / len(vals)
        out["eval/length_mean"] = sum(r["tokens"] for r in rows) / max(1, len(rows))
        out["eval/eos_fraction"] = sum(r["has_eos"] for r in rows) / max(1, len(rows))
        if kls:
            out["eval/kl"] = sum(kls) / len(kls)
        return out


def _seed(seed: int, batch: int) -> int:
    return derive_seed(seed, "heldout", batch)


@torch.no_grad()
def _greedy(policy: nn.Module, tokenizer: Any, batch, response_length: int, micro_batch_size: int):
    """Greedy completions packaged as a ``Rollout`` (log-probs at T=1)."""
    policy.eval()
    batch = batch.to(model_device(policy))
    gen = sampling_config(policy, tokenizer, response_length=response_length, temperature=1.0, stop_at_eos=True)
    gen = copy.deepcopy(gen)
    gen.do_sample = False
    gen.temperature = None
    gen.top_k = None
    gen.top_p = None
    gen.output_scores = False
    with pure_sampling(policy):  # no logits processor of the model's own generation config
        out = policy.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                              generation_config=gen)
    q = batch.input_ids.shape[1]
    seq = out.sequences[:, q:]
    responses = torch.full((seq.shape[0], response_length), tokenizer.pad_token_id, dtype=torch.long,
                           device=seq.device)
    responses[:, : seq.shape[1]] = seq
    mask, has_eos = ops.response_mask_from_eos(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(~mask, tokenizer.pad_token_id)
    qr = torch.cat([batch.input_ids, responses], dim=1)
    am = torch.cat([batch.attention_mask, mask], dim=1)
    logprobs = torch.where(mask, response_logprobs(policy, qr, am, q, 1.0, micro_batch_size), 0.0)
    texts = tokenizer.batch_decode([r[m].tolist() for r, m in zip(responses, mask)], skip_special_tokens=True)
    return Rollout(query_response=qr, attention_mask=am, response_mask=mask, has_eos=has_eos, logprobs=logprobs,
                   prompts=batch.prompts, completions=texts, query_length=q)


def default_best_metric(judges: Sequence[JudgeLike]) -> str:
    """``eval/<first judge>`` when judges are configured, else ``eval/proxy``."""
    return f"eval/{_judge(judges[0])[0]}" if judges else "eval/proxy"


class BestTracker:
    """The best value of ``metric`` seen so far (``mode="max"``: higher is better; ``"min"``: lower is better).

    ``update(metrics)`` returns True when ``metrics`` holds the metric and it beats every earlier value (the first
    value always does): the moment to save the ``best`` checkpoint. ``best`` and ``best_update`` tell where it is.
    """

    def __init__(self, metric: str = "eval/proxy", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.best: Optional[float] = None
        self.best_update: Optional[int] = None

    def update(self, metrics: Mapping[str, Any]) -> bool:
        v = metrics.get(self.metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        better = self.best is None or (v > self.best if self.mode == "max" else v < self.best)
        if better:
            self.best = float(v)
            u = metrics.get("update", metrics.get("step"))
            self.best_update = int(u) if isinstance(u, (int, float)) else None
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "best": self.best, "best_update": self.best_update}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore after a resume (same metric and mode expected)."""
        self.best, self.best_update = state.get("best"), state.get("best_update")


class HeldOut:
    """Held-out evaluation as the run loop calls it (``tether.engine.loop.HeldOut``): due every ``every`` updates
    and at the last (``total``), it evaluates ``policy`` with ``evaluator`` and keeps the best result in ``best``.
    """

    def __init__(self, evaluator: HeldOutEvaluator, policy: nn.Module, *, every: int, total: int,
                 best: BestTracker):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.evaluator, self.policy, self.every, self.total, self.best = evaluator, policy, every, total, best

    def due(self, step: int) -> bool:
        """True when the evaluation runs after update ``step``."""
        return step % self.every == 0 or step == self.total

    def __call__(self) -> dict[str, float]:
        """The ``eval/*`` metrics of the policy as it is now (numbers only)."""
        return {k: v for k, v in self.evaluator(self.policy).items() if isinstance(v, (int, float))}

    def is_best(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` holds the best evaluation so far (the first one always is)."""
        return self.best.update(record)


def ppo_heldout(cfg: Any, policy: nn.Module, tokenizer: Any, rewards: Sequence[Any], reference: nn.Module,
                judges: Optional[Sequence[JudgeLike]] = None) -> Optional[HeldOut]:
    """The held-out evaluation a PPO config's ``monitor`` section asks for (None when ``eval_every`` is 0):
    ``eval_prompts`` scored with the training reward, the judges (``judges`` replaces ``monitor.judges``, the Python
    API) and the KL to ``reference``. One-line ``ConfigError`` when evaluation is asked without a prompt file."""
    mon = cfg.monitor
    if mon.eval_every <= 0:
        return None
    if not mon.eval_prompts:
        raise ConfigError("monitor.eval_prompts: required when monitor.eval_every > 0 (a held-out prompt file)")
    judges = mon.judges if judges is None else list(judges)
    prompts = load_prompts(mon.eval_prompts, tokenizer)[: mon.eval_num_prompts]
    evaluator = HeldOutEvaluator(
        prompts, tokenizer, rewards=rewards, judges=judges, reference=reference,
        response_length=cfg.response_length, temperature=cfg.temperature, greedy=mon.eval_greedy,
        max_prompt_length=cfg.max_prompt_length, micro_batch_size=cfg.scoring_micro_batch, seed=cfg.seed,
    )
    best = BestTracker(mon.best_metric or default_best_metric(judges), mon.best_mode)
    return HeldOut(evaluator, policy, every=mon.eval_every, total=cfg.num_updates, best=best)
