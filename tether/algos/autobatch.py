"""``micro_batch_size: auto`` for PPO: the memory planner (``tether.plan.memory``) over the models a run actually
holds, against the memory of their device.

Each loaded model becomes a :class:`~tether.plan.memory.HeldModel` with its parameters counted once (shared tensors,
the adapter-off reference and a shared trunk hold none of their own), then :func:`~tether.plan.memory.pick_micro_batch`
takes the largest divisor of the minibatch size whose estimated peak fits ``budget × (1 − margin)``.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from tether.config.ppo import PPOConfig
from tether.errors import ConfigError
from tether.models.lora import AdapterOffReference
from tether.plan.memory import (
    GiB,
    HeldModel,
    ModelShape,
    estimate_peak,
    memory_budget,
    pick_micro_batch,
)


def _count(model: nn.Module, trainable: bool = False) -> int:
    """Parameters of ``model`` (each tensor once); with ``trainable`` only those that require gradients."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen and (p.requires_grad or not trainable):
            seen.add(id(p))
            n += p.numel()
    return n


def _dtype(model: nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def held_models(cfg: PPOConfig, policy: nn.Module, reference: nn.Module, critic: Optional[nn.Module],
                rewards: list) -> list[HeldModel]:
    """The PPO run's models as the planner sees them, the policy first."""
    shape = ModelShape.from_model(policy)
    rank = cfg.policy_lora.r if cfg.policy_lora is not None else 0
    shared = critic is not None and cfg.critic_mode == "shared"
    head = _count(critic.head) if shared else 0
    models = [HeldModel("policy", shape, weights=_count(policy) + head, weight_dtype=_dtype(policy),
                        trainable=_count(policy, trainable=True) + head, trained_forward=True, logits=True,
                        lora_rank=rank)]
    ref_weights = 0 if isinstance(reference, AdapterOffReference) else _count(reference)
    models.append(HeldModel("reference", shape, weights=ref_weights,
                            weight_dtype=_dtype(reference) if ref_weights else _dtype(policy)))
    if critic is not None and not shared:
        trunk = getattr(critic, "trunk", critic)
        cshape = ModelShape.from_model(trunk) if hasattr(trunk, "config") else shape
        models.append(HeldModel("critic", cshape, weights=_count(critic), weight_dtype=_dtype(critic),
                                trainable=_count(critic, trainable=True), trained_forward=True,
                                lora_rank=cfg.critic_lora.r if cfg.critic_lora is not None else 0))
    for i, source in enumerate(rewards):
        model = getattr(source.fn, "model", None)
        if isinstance(model, nn.Module) and hasattr(model, "config"):
            models.append(HeldModel(f"reward{i}", ModelShape.from_model(model), weights=_count(model),
                                    weight_dtype=_dtype(model)))
    return models


def auto_micro_batch(cfg: PPOConfig, policy: nn.Module, reference: nn.Module, critic: Optional[nn.Module],
                     rewards: list, budget: Optional[int] = None) -> tuple[int, str]:
    """The largest micro-batch (a divisor of the minibatch size) whose estimated peak fits ``budget`` (default: the
    policy device's memory, :func:`~tether.plan.memory.memory_budget`) with the planner's 20 % margin. Returns the
    size and a one-line account; ``ConfigError`` naming the estimate and the budget when not even 1 fits."""
    models = held_models(cfg, policy, reference, critic, rewards)
    device = next(policy.parameters()).device
    if budget is None:
        budget = memory_budget(device)
    seq = cfg.max_prompt_length + cfg.response_length
    rows = cfg.rollout_batch_size * cfg.samples_per_prompt

    def peak(m: int) -> Any:
        return estimate_peak(models, micro_batch=m, seq_len=seq, generation_batch=rows, generation_len=seq,
                             autocast_bf16=cfg.autocast == "bfloat16", checkpointing=cfg.gradient_checkpointing,
                             entropy=cfg.entropy_coef > 0, loss_len=cfg.response_length)

    minibatch = rows // cfg.num_minibatches
    chosen = pick_micro_batch(lambda m: peak(m).peak, minibatch, budget)
    if chosen is None:
        raise ConfigError(f"micro_batch_size=auto: even micro-batches of 1 need an estimated "
                          f"{peak(1).peak / GiB:.2f} GiB, more than 80 % of the {budget / GiB:.2f} GiB available on "
                          f"{device}; lower rollout_batch_size, max_prompt_length or response_length, or use "
                          "policy_lora / gradient_checkpointing / dtype=bfloat16")
    line = (f"micro_batch_size=auto: {chosen} of minibatch {minibatch} (estimated peak "
            f"{peak(chosen).peak / GiB:.2f} GiB of {budget / GiB:.2f} GiB on {device}, 20 % margin)")
    return chosen, line
