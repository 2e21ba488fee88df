"""Model loading for PPO, written once: the policy and its tokenizer, the frozen reference, the reward sources, the
critic and the prompts, as :class:`PPOParts`. ``PPOTrainer``, ``tether doctor`` and ``tether eval`` load through
these functions, so a model is prepared the same way wherever it is used.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tether.config.ppo import PPOConfig
from tether.console import library_bars
from tether.data.prompts import check_prompt_lengths, load_prompt_set
from tether.errors import ConfigError
from tether.models.checkpointing import enable_checkpointing
from tether.models.forward import check_shared_trunk
from tether.models.load import (
    disable_dropout,
    ensure_pad_token,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resize_for_tokenizer,
    vocab_check,
)
from tether.models.lora import (
    AdapterOffReference,
    is_adapted,
    is_adapter_run,
    load_adapter_run,
    wrap_critic_lora,
    wrap_lora,
)
from tether.models.precision import torch_dtype
from tether.models.value import ValueModel
from tether.rewards.base import RewardSource, resolve_reward_sources
from tether.rewards.reward_model import RewardModelScorer


@dataclass
class PPOParts:
    """What a PPO run trains and scores with."""

    policy: nn.Module
    """The causal LM being trained (pad token set, embeddings sized to the tokenizer, dropout off)."""
    tokenizer: Any
    """The policy's tokenizer, left-padding."""
    reference: nn.Module
    """The frozen reference π_ref (eval mode, no gradients, in ``cfg.dtype``)."""
    rewards: list[RewardSource]
    """The weighted reward sources."""
    critic: Optional[nn.Module]
    """The value model (None in critic-free modes)."""
    prompts: list[str]
    """The training prompt texts, length-checked."""
    adapter: Any = None
    """With ``policy_lora``: the peft wrapper of ``policy`` (what switches the adapter off, saves and merges it);
    ``policy`` is the adapted transformers model inside it. None for full fine-tuning."""
    critic_adapter: Any = None
    """With ``critic_lora``: the peft wrapper of the critic's trunk; else None."""


def open_policy(source: Any, tokenizer: Any = None, *, trust_remote_code: bool = False,
                progress: bool = True) -> tuple[nn.Module, Any, bool]:
    """The policy as given: ``source`` a model directory (loaded with its tokenizer; an adapter run directory loads
    its recorded base with the adapter on, ``tether.models.lora.load_adapter_run``) or a loaded causal LM (then
    ``tokenizer`` is required). Returns ``(model, tokenizer, loaded_here)``; nothing is modified yet."""
    if source is None:
        raise ConfigError("policy: required (a model directory or a loaded causal LM)")
    if isinstance(source, (str, os.PathLike)) and is_adapter_run(source):  # an adapter run: base + its adapter
        wrapped, run_tok = load_adapter_run(source, trust_remote_code=trust_remote_code)
        return wrapped.get_base_model(), tokenizer or run_tok, True
    if isinstance(source, (str, os.PathLike)):
        tokenizer = tokenizer or load_tokenizer(source, trust_remote_code)
        with library_bars(progress):
            model = load_causal_lm(source, trust_remote_code=trust_remote_code)
        return model, tokenizer, True
    if tokenizer is None:
        raise ConfigError("tokenizer: required when the policy is passed as a model object")
    return source, tokenizer, False


def load_policy(source: Any, tokenizer: Any = None, *, pad_policy: str = "add", trust_remote_code: bool = False,
                progress: bool = True) -> tuple[nn.Module, Any]:
    """:func:`open_policy`, then made ready to sample from: a distinct pad token (``pad_policy``), the embeddings
    sized to the tokenizer, dropout off, left padding."""
    policy, tokenizer, _ = open_policy(source, tokenizer, trust_remote_code=trust_remote_code, progress=progress)
    ensure_pad_token(tokenizer, pad_policy)
    resize_for_tokenizer(policy, tokenizer)
    vocab_check(policy, tokenizer, "policy")
    disable_dropout(policy)
    tokenizer.padding_side = "left"
    return policy, tokenizer


def load_reference(cfg: PPOConfig, policy: nn.Module, tokenizer: Any, reference: Optional[nn.Module] = None
                   ) -> nn.Module:
    """The frozen reference: ``reference``, else ``cfg.reference`` loaded, else a copy of the policy."""
    if reference is None and cfg.reference:
        reference = load_causal_lm(cfg.reference, trust_remote_code=cfg.trust_remote_code)
    if reference is None:
        reference = copy.deepcopy(policy)
    resize_for_tokenizer(reference, tokenizer)
    vocab_check(reference, tokenizer, "reference")
    reference = disable_dropout(reference).eval().requires_grad_(False)
    if cfg.dtype != "float32":
        reference = reference.to(torch_dtype(cfg.dtype))
    return reference


def load_rewards(cfg: PPOConfig, reward: Any, tokenizer: Any) -> list[RewardSource]:
    """The reward sources: ``reward`` (objects, the Python API) or ``cfg.rewards``, reward models in ``cfg.dtype``."""
    return resolve_reward_sources(reward, cfg.rewards, tokenizer, torch_dtype(cfg.dtype), cfg.trust_remote_code)


def load_critic(cfg: PPOConfig, policy: nn.Module, tokenizer: Any, rewards: list[RewardSource],
                critic: Optional[nn.Module] = None) -> nn.Module:
    """The value model: ``critic`` as given; with ``critic_mode=shared`` a fresh head on the policy's own trunk;
    else a value head on ``cfg.critic``, or on a copy of the reward model (when it shares the tokenizer and has a
    linear score head), or on a copy of the policy. It trains in float32 (float64 when handed a float64 model)."""
    if critic is not None:
        return critic
    if cfg.critic_mode == "shared":  # a fresh value head on the policy's own trunk (no copy)
        vocab = policy.get_input_embeddings().num_embeddings
        try:
            check_shared_trunk(policy, torch.arange(min(8, vocab)).unsqueeze(0))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        value = ValueModel.from_pretrained_model(policy)
        if is_adapted(policy):  # the trunk's base weights stay frozen; its adapter trains with the policy
            value.head.requires_grad_(True)
            return value
        return value.requires_grad_(True)
    source: nn.Module
    if cfg.critic:
        cfg_json = Path(cfg.critic) / "config.json"
        archs = json.loads(cfg_json.read_text()).get("architectures") or [] if cfg_json.is_file() else []
        loader = load_sequence_classifier if any("SequenceClassification" in a for a in archs) else load_causal_lm
        source = loader(cfg.critic, trust_remote_code=cfg.trust_remote_code)
    else:
        rm = next(
            (s.fn for s in rewards if isinstance(s.fn, RewardModelScorer) and s.fn.shares_tokenizer
             and isinstance(getattr(s.fn.model, "score", None), nn.Linear)),
            None,
        )
        source = copy.deepcopy(rm.model) if rm is not None else copy.deepcopy(policy)
    resize_for_tokenizer(source, tokenizer)
    value = ValueModel.from_pretrained_model(source)
    if cfg.dtype != "float32" or next(value.parameters()).dtype == torch.bfloat16:
        value = value.float()
    return value.requires_grad_(True)


def load_prompts(cfg: PPOConfig, prompts: Any, tokenizer: Any) -> list[str]:
    """The prompt texts, checked for length by the prompt rule; errors name the prompt's file line."""
    if prompts is None:
        raise ConfigError("prompts: required (a list of strings, a prompt file, or a datasets.Dataset)")
    found = load_prompt_set(prompts, tokenizer)
    if not found.texts:
        raise ConfigError("prompts: the prompt set is empty")
    for where, p in zip(found.where, found.texts):
        if not p.strip():
            raise ConfigError(f"{where}: the prompt is empty")
    check_prompt_lengths(tokenizer, found, cfg.max_prompt_length, cfg.prompt_truncation)
    return found.texts


def load_ppo_parts(cfg: PPOConfig, *, policy: Any = None, tokenizer: Any = None, reward: Any = None,
                   prompts: Any = None, reference: Optional[nn.Module] = None,
                   critic: Optional[nn.Module] = None) -> PPOParts:
    """Everything a PPO run needs; objects given win over the paths in ``cfg`` (as for ``PPOTrainer``).

    ``policy_lora``: the policy gets its adapter after the reference and a separate critic were taken from the base
    (so neither copies the adapter); the reference is then the adapter-off view of the policy unless ``reference`` is
    passed. ``critic_lora``: the separate critic's trunk gets its own adapter. ``gradient_checkpointing``: turned on
    in the policy and the critic (it acts inside ``grad_forward``, tether.algos.ppo)."""
    pol, tok = load_policy(policy if policy is not None else cfg.policy, tokenizer, pad_policy=cfg.pad_policy,
                           trust_remote_code=cfg.trust_remote_code, progress=False)
    if is_adapted(pol):
        raise ConfigError(f"policy: {cfg.policy or type(pol).__name__} carries a LoRA adapter; train from its base "
                          "model, or from the merged model (merged/, written with policy_lora.merge_on_save)")
    lora = cfg.policy_lora is not None
    ref = load_reference(cfg, pol, tok, reference) if not lora or reference is not None else None
    rewards = load_rewards(cfg, reward, tok)
    separate = cfg.uses_critic and cfg.critic_mode == "separate"
    value = load_critic(cfg, pol, tok, rewards, critic) if separate else None
    critic_adapter = wrap_critic_lora(value, cfg.critic_lora) if separate and cfg.critic_lora is not None else None
    adapter = wrap_lora(pol, cfg.policy_lora) if lora else None
    if ref is None:
        ref = AdapterOffReference(adapter)
    if cfg.uses_critic and not separate:
        value = load_critic(cfg, pol, tok, rewards, critic)
    if cfg.gradient_checkpointing:
        for model in (pol, value if separate else None):
            if model is not None:
                try:
                    enable_checkpointing(model)
                except ValueError as err:
                    raise ConfigError(f"gradient_checkpointing: {err}") from None
    texts = load_prompts(cfg, prompts if prompts is not None else cfg.prompts, tok)
    return PPOParts(policy=pol, tokenizer=tok, reference=ref, rewards=rewards, critic=value, prompts=texts,
                    adapter=adapter, critic_adapter=critic_adapter)
