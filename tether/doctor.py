"""``tether doctor``: pre-flight checks of a policy, tokenizer and reward for the classic silent PPO mistakes.

Each check runs on a handful of short prompts in seconds and returns a :class:`CheckResult` (``pass``, ``fail``,
``warn`` or ``skip``) with the fix for a failure:

============================  ==================================================================================
check                         what it verifies
============================  ==================================================================================
``pad_token``                 the tokenizer has a pad token and it is not EOS (else every real EOS is masked)
``chat_template``             the tokenizer has a chat template when the prompt data holds chat messages
``prompt_encoding``           the prompt ids PPO feeds the policy equal those SFT and reward-model training put before
                              their completions for the same text (the tokenizer's BOS, once)
``padding``                   a padded batch gives the same logits at every real token, and the same next-token
                              logits at the last column, as each prompt alone (padding side and position ids)
``reward_last_token``         the reward model has a trained score head, reads its score at the last real token,
                              and extra padding on either side does not change it
``zero_update``               with no update, the training forward reproduces the rollout log-probs exactly:
                              ratio == 1 and KL to the (identical) reference == 0
``rollout_logprobs``          the sampler's log-probs and the training forward's agree at the configured temperature
``memory``                    estimated peak memory of the configured batch sizes against the memory available
============================  ==================================================================================

The check functions take the pieces they test as arguments — a ``forward`` or ``score_fn`` or ``logprob_fn``
callable, a padding side, a sampler temperature — so a user (or a test) can run them on their own code paths.
:func:`run_checks` assembles them from a :class:`~tether.config.ppo.PPOConfig` the way ``tether ppo`` would load
things; ``fast=True`` keeps the checks that need no generation (what PPO runs before training).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tether.algos.parts import load_rewards, open_policy
from tether.config.ppo import PPOConfig
from tether.data.preferences import encode_for_reward, encode_for_reward_model
from tether.data.prompts import prompt_ids
from tether.data.readers import read_prompts, render_chat
from tether.data.sft import tokenize_sft
from tether.errors import TetherError
from tether.models.forward import causal_lm_logits
from tether.models.load import ensure_pad_token, resize_for_tokenizer
from tether.models.scalar import is_decoder_scorer, score_offset, sequence_scores
from tether.engine.dist import resolve_device
from tether.rollout.generate import encode_prompts, generate, model_device, response_logprobs
from tether.rewards.reward_model import RewardModelScorer
from tether.rollout.score import reference_logprobs

FAST_CHECKS = ("pad_token", "chat_template", "prompt_encoding", "padding", "reward_last_token", "memory")
ALL_CHECKS = ("pad_token", "chat_template", "prompt_encoding", "padding", "reward_last_token", "zero_update",
              "rollout_logprobs", "memory")
FALLBACK_PROMPTS = ["The movie was", "Once upon a time, in a small village by the sea, there lived",
                    "My favourite food is", "Write one sentence about the weather today:"]
FALLBACK_COMPLETIONS = [" great fun.", " an old fisherman who loved to sing.", " warm bread with butter.",
                        " It is sunny."]

PAD_FIX = "tokenizer.add_special_tokens({'pad_token': '<|pad|>'}), then model.resize_token_embeddings(len(tokenizer))"

ForwardFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
ScoreFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
LogprobFn = Callable[[nn.Module, Tensor, Tensor, int, float, int], Tensor]


@dataclass
class CheckResult:
    """One check: ``status`` is ``pass``, ``fail``, ``warn`` or ``skip``; ``fix`` says what to do when not passed."""

    name: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def _result(name: str, ok: bool, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, "pass" if ok else "fail", detail, "" if ok else fix)


def _first_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int = 24) -> list[list[int]]:
    rows = []
    for t in texts:
        ids = prompt_ids(tokenizer, t, max_tokens)
        if ids:
            rows.append(ids)
    if not rows:
        raise ValueError("the prompts tokenise to nothing")
    if len({len(r) for r in rows}) == 1:  # need different lengths for padding to matter
        rows.append(rows[0][-max(1, len(rows[0]) // 2) :] if len(rows[0]) > 1 else rows[0] * 3)
    return rows


def _pad(rows: Sequence[Sequence[int]], pad_id: int, side: str, extra: int = 0) -> tuple[Tensor, Tensor]:
    length = max(len(r) for r in rows) + extra
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        start = length - len(r) if side == "left" else 0
        ids[i, start : start + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, start : start + len(r)] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------ the checks


def check_pad_token(tokenizer: Any) -> CheckResult:
    """Pad token present and different from EOS (ppo_details.md A1)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    fix = f"give the tokenizer a distinct pad token: pad_policy=add (the default) in tether; in your own code {PAD_FIX}"
    if eos is None:
        return _result("pad_token", False, "the tokenizer has no EOS token",
                       "set tokenizer.eos_token to the token that ends a completion")
    if pad is None:
        return _result("pad_token", False, "the tokenizer has no pad token", fix)
    if pad == eos:
        return _result("pad_token", False, f"the pad token is EOS ({tokenizer.eos_token!r}, id {eos}): masking pads "
                       "would mask every real EOS and the model never learns to stop", fix)
    return _result("pad_token", True, f"pad {tokenizer.pad_token!r} (id {pad}) ≠ EOS {tokenizer.eos_token!r} "
                   f"(id {eos})", "")


def check_chat_template(tokenizer: Any, raw_prompts: Optional[Sequence[Any]]) -> CheckResult:
    """When any prompt is a list of chat messages, the tokenizer must carry a chat template."""
    if raw_prompts is None:
        return CheckResult("chat_template", "skip", "no prompt data given")
    chats = sum(1 for p in raw_prompts if isinstance(p, list))
    has = bool(getattr(tokenizer, "chat_template", None))
    if not chats:
        return CheckResult("chat_template", "pass", "plain-text prompts" + (" (the tokenizer has a chat template; "
                           "it is not applied to plain strings)" if has else ""))
    return _result("chat_template", has,
                   f"{chats} of {len(raw_prompts)} prompts are chat messages; the tokenizer "
                   + ("has a chat template" if has else "has NO chat template (tether would fall back to plain "
                                                           "'User: …\\nAssistant:' text the model never saw)"),
                   "use the tokenizer the model was tuned with (its tokenizer_config.json holds chat_template), set "
                   "tokenizer.chat_template, or give plain-string prompts")


def check_prompt_encoding(tokenizer: Any, prompts: Sequence[Any], completion: str = " It was fine.") -> CheckResult:
    """For each prompt (a string, or a chat conversation), the ids PPO's rollout feeds the policy
    (:func:`tether.rollout.generate.encode_prompts`) must be exactly those in front of the completion in an SFT example
    (:func:`tether.data.sft.tokenize_sft`) and in a same-tokenizer reward model's input
    (:func:`tether.data.preferences.encode_for_reward`): with a BOS-adding tokenizer, a BOS dropped or doubled on one
    path means the policy and reward model are fed prompts they were never trained on."""
    bad: list[str] = []
    checked = 0
    for raw in list(prompts)[:4]:
        chat = isinstance(raw, list)
        text = render_chat(raw, tokenizer, add_generation_prompt=True) if chat else raw
        done = [{"role": "assistant", "content": completion.strip()}] if chat else completion
        batch = encode_prompts(tokenizer, [text], [text], 1 << 20, "left")
        ppo = batch.input_ids[0][batch.attention_mask[0]].tolist()
        sft = tokenize_sft({"prompt": raw, "completion": done}, tokenizer)
        n = len(ppo)
        sft_ok = (sft["input_ids"][:n] == ppo and not any(sft["completion_mask"][:n])
                  and len(sft["completion_mask"]) > n and sft["completion_mask"][n] == 1)
        rm = encode_for_reward(tokenizer, raw, done, style="decoder", max_length=1 << 20)
        rm_ok = rm[:n] == ppo and len(rm) > n
        checked += 1
        if not (sft_ok and rm_ok):
            where = " and ".join(w for w, ok in (("SFT", sft_ok), ("reward model", rm_ok)) if not ok)
            bad.append(f"{text[:30]!r}: PPO {ppo[:4]}… vs {where} {(sft['input_ids'] if not sft_ok else rm)[:4]}…")
    lead = encode_prompts(tokenizer, ["a"], ["a"], 8, "left").input_ids[0].tolist()[:-1]
    detail = (f"{checked} prompts: PPO's prompt ids equal the SFT and reward-model prompt ids"
              + (f" (the tokenizer's leading special tokens {lead})" if lead else " (the tokenizer adds no BOS)"))
    if bad:
        detail = f"{len(bad)} of {checked} prompts encode differently: " + "; ".join(bad)
    return _result("prompt_encoding", not bad, detail,
                   "encode every prompt with one rule (tether.data.prompts.prompt_ids): the tokenizer's BOS once, "
                   "whether the text came from a chat template or not")


@torch.no_grad()
def check_padding(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, padding_side: str = "left",
                  forward: ForwardFn = causal_lm_logits, atol: float = 1e-4) -> CheckResult:
    """A batch padded on ``padding_side`` must give, for every prompt, the logits it gets alone: at each real token,
    and at the batch's last column (where generation continues). ``forward(model, ids, mask) -> logits`` is the
    forward under test (tether's passes position ids from the mask)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = _first_ids(tokenizer, prompts)
    was = model.training
    model.eval()
    try:
        dev = model_device(model)
        ids, mask = (t.to(dev) for t in _pad(rows, pad, padding_side))
        batch = forward(model, ids, mask).float()
        tok_dev = next_dev = 0.0
        scale = 1.0
        for i, r in enumerate(rows):
            alone = forward(model, torch.tensor([r], device=dev),
                            torch.ones(1, len(r), dtype=torch.long, device=dev)).float()[0]
            scale = max(scale, float(alone.abs().max()))
            real = mask[i].bool()
            tok_dev = max(tok_dev, float((batch[i][real] - alone).abs().max()))
            next_dev = max(next_dev, float((batch[i, -1] - alone[-1]).abs().max()))
    finally:
        model.train(was)
    tol = atol * scale
    detail = (f"{padding_side}-padded batch of {len(rows)} prompts vs each alone: max |Δlogit| {tok_dev:.2e} at real "
              f"tokens, {next_dev:.2e} for the next token at the last column (tolerance {tol:.1e})")
    if tok_dev > tol:
        fix = ("the model's positions count the pads: pass position_ids = cumsum(mask) − mask (exclusive cumsum, "
               "tether.models.forward.causal_lm_logits) with left-padded prompts")
        return _result("padding", False, detail, fix)
    if next_dev > tol:
        return _result("padding", False, detail,
                       "prompts must be LEFT-padded for generation (tokenizer.padding_side = 'left'): right-padded, a "
                       "shorter prompt's first new token follows a pad, not its last token")
    return _result("padding", True, detail, "")


def _reference_decoder_score(model: nn.Module, ids: Tensor) -> Optional[float]:
    """The score read directly at the last token of one unpadded row (decoders with a ``score`` head)."""
    if not is_decoder_scorer(model):
        return None
    out = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return float(model.score(hidden[:, -1]).squeeze(-1).float()[0]) + score_offset(model)


@torch.no_grad()
def check_reward_model(model: nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *,
                       score_fn: Optional[ScoreFn] = None, atol: float = 1e-4, max_length: int = 64,
                       name: str = "reward_last_token") -> CheckResult:
    """The reward model's score of (prompt, completion) must be read at the last real token: equal to the score of
    the row alone, to the head applied at its last token (decoders), and unchanged by extra pads on either side.
    ``score_fn(model, ids, mask) -> (B,)`` is the scoring under test (tether's: ``sequence_scores``)."""
    score_fn = score_fn or sequence_scores
    n = min(len(prompts), len(completions))
    dev = model_device(model)
    ids, mask = encode_for_reward_model(tokenizer, list(prompts[:n]), list(completions[:n]), max_length=max_length)
    ids, mask = ids.to(dev), mask.to(dev)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
    was = model.training
    model.eval()
    try:
        base = score_fn(model, ids, mask).float()
        scale = max(1.0, float(base.abs().max()))
        devs = {}
        for side in ("left", "right"):
            ids2, mask2 = (t.to(dev) for t in _pad(rows, pad, side, extra=3))
            devs[f"3 extra {side} pads"] = float((score_fn(model, ids2, mask2).float() - base).abs().max())
        alone = torch.stack([score_fn(model, torch.tensor([r], device=dev),
                                      torch.ones(1, len(r), dtype=torch.long, device=dev)).float()[0] for r in rows])
        devs["each row alone"] = float((alone - base).abs().max())
        direct = [_reference_decoder_score(model, torch.tensor([r], device=dev)) for r in rows]
        if all(d is not None for d in direct):
            devs["head at the last real token"] = float((torch.tensor(direct) - alone.cpu()).abs().max())
    finally:
        model.train(was)
    worst = max(devs, key=devs.get)
    # a bf16 reward model (dtype: bfloat16) rounds differently per batch shape: allow a few units of its precision
    atol = max(atol, 8 * torch.finfo(next(model.parameters()).dtype).eps)
    bad = devs[worst] > atol * scale
    detail = f"{len(rows)} (prompt, completion) pairs: max |Δscore| " + ", ".join(
        f"{v:.1e} vs {k}" for k, v in devs.items()) + f" (tolerance {atol * scale:.1e})"
    return _result(name, not bad, detail,
                   f"the score moves with {worst}: read the head at the last real token, found from the attention "
                   "mask (tether.models.scalar.sequence_scores), not at the last column or by searching for the pad "
                   "id (wrong when pad == EOS)")


@torch.no_grad()
def check_zero_update(policy: nn.Module, tokenizer: Any, prompts: Sequence[str], *, temperature: float,
                      response_length: int = 8, logprob_fn: Optional[LogprobFn] = None,
                      reference: Optional[nn.Module] = None, seed: int = 0, tol: float = 1e-5) -> CheckResult:
    """Sample a small rollout, then recompute its log-probs with the training forward (policy in train mode) and
    the reference forward without any update: the ratio must be exactly 1 and the KL to the reference 0.
    ``reference`` defaults to the policy itself (the frozen copy is identical at update 0). ``logprob_fn(model, ids,
    mask, q, temperature, micro_batch_size)`` is the training log-prob computation under test."""
    logprob_fn = logprob_fn or response_logprobs
    texts = list(prompts[:4])
    was = policy.training
    rollout, _ = _sample(policy, tokenizer, texts, temperature, response_length, seed)
    mask = rollout.response_mask
    if not bool(mask.any()):
        return CheckResult("zero_update", "skip", "every sampled completion was empty (immediate EOS)")
    policy.train()  # the trainer's forward runs in train mode: dropout left on would show here
    try:
        new = logprob_fn(policy, rollout.query_response, rollout.attention_mask, rollout.query_length, temperature,
                         len(texts)).float()
    finally:
        policy.train(was)
    ref_model = reference if reference is not None else policy
    ref_was = ref_model.training
    ref = reference_logprobs(ref_model.eval(), rollout, temperature, len(texts)).float()
    ref_model.train(ref_was)
    ratio_dev = float(torch.where(mask, (new - rollout.logprobs.float()).exp() - 1, 0.0).abs().max())
    kl = torch.where(mask, rollout.logprobs.float() - ref, 0.0).sum(1)
    kl_dev = float(kl.abs().max())
    detail = (f"{int(mask.sum())} sampled tokens at T={temperature}: max |ratio − 1| {ratio_dev:.1e}, "
              f"max |KL| {kl_dev:.1e} nats/sequence")
    return _result("zero_update", ratio_dev <= tol and kl_dev <= tol * 10, detail,
                   "old, new and reference log-probs must come from the same computation: logits / temperature for "
                   "all three, dropout off (tether.models.load.disable_dropout), the same padding and position ids")


def _sample(policy: nn.Module, tokenizer: Any, texts: list[str], temperature: float, response_length: int,
            seed: int):
    """One seeded rollout of ``texts`` (left-padded, up to 64 prompt tokens) that leaves the global RNG as it was."""
    batch = encode_prompts(tokenizer, texts, texts, 64, "left")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return generate(policy, tokenizer, batch, response_length=response_length, temperature=temperature,
                        stop_at_eos=True, micro_batch_size=len(texts))


@torch.no_grad()
def check_rollout_logprobs(policy: nn.Module, tokenizer: Any, prompts: Sequence[str], *, temperature: float,
                           response_length: int = 8, logprob_fn: Optional[LogprobFn] = None,
                           sample_temperature: Optional[float] = None, seed: int = 0,
                           tol: float = 1e-3) -> CheckResult:
    """Log-probs the sampler used (its own log softmax(logits/T)) must match the training forward's at
    ``temperature``. ``sample_temperature``: the temperature the sampler actually applies (default: the same);
    ``logprob_fn``: the training log-prob computation under test."""
    logprob_fn = logprob_fn or response_logprobs
    texts = list(prompts[:4])
    t_sample = temperature if sample_temperature is None else sample_temperature
    rollout, gen_lp = _sample(policy, tokenizer, texts, t_sample, response_length, seed)
    mask = rollout.response_mask
    if not bool(mask.any()):
        return CheckResult("rollout_logprobs", "skip", "every sampled completion was empty (immediate EOS)")
    train = logprob_fn(policy, rollout.query_response, rollout.attention_mask, rollout.query_length, temperature,
                       len(texts)).float()
    dev = float(torch.where(mask, train - gen_lp.float(), 0.0).abs().max())
    detail = f"{int(mask.sum())} sampled tokens: max |log π_sampler − log π_train| {dev:.1e} at T={temperature}"
    return _result("rollout_logprobs", dev <= tol, detail,
                   "sample and score at the same temperature: divide the logits by T in the training forward "
                   "(tether.ops.logprobs_from_logits) and sample at the same T from exactly softmax(logits/T), "
                   "with no top-k/top-p or repetition penalty (tether.rollout.sampler)")


def _params(model: Optional[nn.Module]) -> int:
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def _arch(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "config", None)
    get = (lambda *names: next((int(getattr(cfg, n)) for n in names if isinstance(getattr(cfg, n, None), int)), 0))
    hidden = get("hidden_size", "n_embd", "d_model") or 768
    layers = get("num_hidden_layers", "n_layer", "num_layers") or 12
    vocab = model.get_input_embeddings().num_embeddings
    return hidden, layers, vocab


def available_memory(device: Optional[torch.device] = None) -> tuple[int, str]:
    """Bytes free on ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable from /proc/meminfo or physical pages)."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable (RAM)"
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")), "free RAM"
    except (ValueError, OSError, AttributeError):
        return 0, "unknown"


def estimate_peak_memory(cfg: Any, policy: nn.Module, reward_models: Sequence[nn.Module] = (),
                         critic_params: Optional[int] = None) -> dict[str, int]:
    """Rough peak bytes of a PPO run: weights, gradients and AdamW state of the trained models (16 B/param in
    float32), the frozen reference and reward models at their dtype, and the larger of the training micro-batch's
    activations and logits or the rollout's KV cache and sampling scores. An estimate to catch a plan that cannot
    fit, not a measurement."""
    hidden, layers, vocab = _arch(policy)
    p = _params(policy)
    ref_bytes = 2 if cfg.dtype == "bfloat16" else 4
    seq = cfg.max_prompt_length + cfg.response_length
    mb = 1 if cfg.micro_batch_size == "auto" else cfg.micro_batch_size  # auto: the smallest the planner picks
    rollout_rows = cfg.rollout_batch_size * cfg.samples_per_prompt
    parts = {
        "policy (weights, grads, AdamW)": 16 * p,
        "reference": ref_bytes * p,
        "reward models": sum(ref_bytes * _params(m) for m in reward_models),
    }
    if cfg.uses_critic:
        parts["critic (weights, grads, AdamW)"] = 16 * (p if critic_params is None else critic_params)
    train_act = 4 * mb * seq * (layers * hidden * 16 + vocab * 3)
    gen = 4 * rollout_rows * (seq * layers * 2 * hidden + cfg.response_length * vocab)
    parts["activations (max of training micro-batch, rollout)"] = max(train_act, gen)
    parts["total"] = sum(parts.values())
    return parts


def check_memory(cfg: Any, policy: nn.Module, reward_models: Sequence[nn.Module] = (), *,
                 available_bytes: Optional[int] = None, critic_params: Optional[int] = None) -> CheckResult:
    """Estimated peak memory (:func:`estimate_peak_memory`) against the memory available on the policy's device."""
    parts = estimate_peak_memory(cfg, policy, reward_models, critic_params)
    device = next(policy.parameters()).device
    where = "given"
    if available_bytes is None:
        available_bytes, where = available_memory(device)
    need = parts["total"]
    gib = 1024**3
    detail = (f"≈ {need / gib:.2f} GiB peak (" + ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items()
                                                          if k != "total") + f") vs {available_bytes / gib:.2f} GiB "
              f"{where}")
    fix = ("lower micro_batch_size (gradients accumulate, results unchanged), rollout_batch_size × samples_per_prompt,"
           " max_prompt_length or response_length; dtype=bfloat16 halves the frozen models")
    if available_bytes <= 0:
        return CheckResult("memory", "skip", detail + " (available memory unknown)")
    if need > available_bytes:
        return CheckResult("memory", "fail", detail, fix)
    if need > 0.8 * available_bytes:
        return CheckResult("memory", "warn", detail + " — over 80% of what is available", fix)
    return CheckResult("memory", "pass", detail)


# ------------------------------------------------------------------------------------------------ assembling them


def _timed(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as err:  # a check that crashes is a finding, not a crash of the doctor
        first = (str(err).splitlines() or [""])[0]
        res = CheckResult(name, "fail", f"the check itself failed: {type(err).__name__}: {first}",
                          "run with --debug for the traceback; this usually means the model or tokenizer cannot "
                          "run tether's forward")
    res.seconds = time.perf_counter() - t0
    return res


def run_checks(cfg: Any, *, policy: Any = None, tokenizer: Any = None, reward: Any = None, prompts: Any = None,
               fast: bool = False, checks: Optional[Sequence[str]] = None) -> list[CheckResult]:
    """Run the pre-flight checks for ``cfg`` (a :class:`~tether.config.ppo.PPOConfig`), loading what is not given
    the way ``PPOTrainer`` does. ``policy``/``tokenizer``/``reward``/``prompts``: as for ``PPOTrainer`` (objects
    win over the config's paths). ``fast``: only :data:`FAST_CHECKS` (no generation); ``checks``: an explicit subset.
    Models passed in are not modified (a copy is resized when a pad token has to be added)."""
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"run_checks needs a PPOConfig, got {type(cfg).__name__}")
    names = tuple(checks) if checks is not None else (FAST_CHECKS if fast else ALL_CHECKS)
    unknown = set(names) - set(ALL_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {', '.join(ALL_CHECKS)}")
    device = resolve_device(cfg.device)  # a missing GPU: one line, before any model loads
    model, tokenizer, owned = open_policy(policy if policy is not None else cfg.policy, tokenizer,
                                          trust_remote_code=cfg.trust_remote_code, progress=False)
    if model_device(model) != device:  # the checks run where the run would; a model passed in stays where it is
        model = (model if owned else copy.deepcopy(model)).to(device)
        owned = True
    results: list[CheckResult] = []

    # pad token: judged on the tokenizer as given; with pad_policy=add tether repairs it, so that is a warning
    if "pad_token" in names:
        res = _timed("pad_token", lambda: check_pad_token(tokenizer))
        if res.status == "fail" and cfg.pad_policy == "add" and tokenizer.eos_token_id is not None:
            res = CheckResult("pad_token", "warn", res.detail + "; tether adds a distinct <|pad|> (pad_policy=add) "
                              "and grows the embeddings by one row", f"nothing to do for tether; in your own code "
                              f"{PAD_FIX}", res.seconds)
        results.append(res)
    tok = tokenizer
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tok = copy.deepcopy(tokenizer)
        try:
            ensure_pad_token(tok, "add")
        except ValueError:
            return results
        if not owned:
            model = copy.deepcopy(model)
        resize_for_tokenizer(model, tok)
    tok.padding_side = "left"

    raw_prompts, texts = _prompts(prompts if prompts is not None else cfg.prompts, tok)
    if "chat_template" in names:
        results.append(_timed("chat_template", lambda: check_chat_template(tok, raw_prompts)))
    if "prompt_encoding" in names:
        results.append(_timed("prompt_encoding", lambda: check_prompt_encoding(tok, raw_prompts or texts)))
    if "padding" in names:
        results.append(_timed("padding", lambda: check_padding(model, tok, texts)))
    reward_models: list[nn.Module] = []
    if "reward_last_token" in names or "memory" in names:
        reward_models = _reward_checks(cfg, reward, tok, texts, results, "reward_last_token" in names)
    if "zero_update" in names:
        results.append(_timed("zero_update", lambda: check_zero_update(
            model, tok, texts, temperature=cfg.temperature, response_length=min(8, cfg.response_length),
            seed=cfg.seed)))
    if "rollout_logprobs" in names:
        results.append(_timed("rollout_logprobs", lambda: check_rollout_logprobs(
            model, tok, texts, temperature=cfg.temperature, response_length=min(8, cfg.response_length),
            seed=cfg.seed)))
    if "memory" in names:
        results.append(_timed("memory", lambda: check_memory(cfg, model, reward_models)))
    order = {n: i for i, n in enumerate(ALL_CHECKS)}
    return sorted(results, key=lambda r: order.get(r.name.split(":")[0], len(order)))


def _prompts(source: Any, tokenizer: Any) -> tuple[Optional[list[Any]], list[str]]:
    """(raw prompts or None, a few rendered prompt strings); the fallback prompts when none are given."""
    if source is None:
        return None, list(FALLBACK_PROMPTS)
    if isinstance(source, list) and all(isinstance(p, str) for p in source):
        raw: list[Any] = list(source)
    else:
        raw = read_prompts(source)
    texts = [p if isinstance(p, str) else render_chat(p, tokenizer, add_generation_prompt=True) for p in raw[:4]]
    return raw, texts or list(FALLBACK_PROMPTS)


def _reward_checks(cfg: Any, reward: Any, tokenizer: Any, texts: list[str], results: list[CheckResult],
                   run_check: bool) -> list[nn.Module]:
    try:
        sources = load_rewards(cfg, reward, tokenizer)
    except TetherError as err:
        if reward is None and not cfg.rewards:
            if run_check:
                results.append(CheckResult("reward_last_token", "skip", f"no reward to check ({err})"))
            return []
        # a configured reward that cannot be used (a causal LM without a score head, a missing directory) fails
        results.append(CheckResult("reward_last_token", "fail", f"the reward cannot be loaded: {err}",
                                   "give a trained reward model (`tether rm`), a Python reward or a judge"))
        return []
    models = [s for s in sources if isinstance(s.fn, RewardModelScorer)]
    device = resolve_device(cfg.device)
    for s in models:  # where PPO would score with them (tether.algos.ppo_trainer.place_parts)
        s.fn.model.to(device)
    if run_check and not models:
        results.append(CheckResult("reward_last_token", "skip",
                                   "no reward model among the reward sources (Python functions and judges read text)"))
    if run_check:
        comps = FALLBACK_COMPLETIONS[: len(texts)] + FALLBACK_COMPLETIONS[: max(0, len(texts) - 4)]
        for s in models:
            label = "reward_last_token" if len(models) == 1 else f"reward_last_token:{s.name}"
            results.append(_timed(label, lambda s=s, label=label: check_reward_model(
                s.fn.model, s.fn.tokenizer, texts, comps, name=label)))
    return [s.fn.model for s in models]


def format_results(results: Sequence[CheckResult]) -> str:
    """The pass/fail table: one row per check, then the fix under every check that did not pass."""
    marks = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "skip"}
    w = max([len(r.name) for r in results] + [5])
    lines = [f"{'check':<{w}}  status  time   detail", f"{'-' * w}  ------  -----  ------"]
    for r in results:
        lines.append(f"{r.name:<{w}}  {marks.get(r.status, r.status):<6}  {r.seconds:4.1f}s  {r.detail}")
        if r.fix and r.status in ("fail", "warn"):
            lines.append(f"{'':<{w}}  {'':<6}  {'':<5}  fix: {r.fix}")
    failed = [r.name for r in results if r.status == "fail"]
    lines.append("")
    lines.append(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed
                 else f"all {len(results)} checks passed" + (" (with warnings)" if any(r.status == "warn"
                                                                                      for r in results) else ""))
    return "\n".join(lines)

