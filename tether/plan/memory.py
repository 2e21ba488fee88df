"""Peak-memory estimate of a PPO/SFT/RM configuration, and the largest micro-batch that fits a budget.

Every function is arithmetic on a :class:`ModelShape` (read from a transformers config, or counted on a model) and
returns **bytes** unless its name says otherwise. What is counted:

- weights: parameters × bytes of the dtype they are held in (tied embeddings once);
- training state of the trainable parameters: float32 gradients, AdamW's two float32 moments, and a float32 master
  copy when the weights themselves are held in a 16-bit dtype;
- activations autograd keeps for the backward, per token per layer, for a pre-norm decoder block (Llama, Mistral,
  Qwen, SmolLM, GPT-2), counted from what each op saves (checked against ``saved_tensors_hooks`` on tiny models in
  tests/plan/test_memory.py):
  two norms ``2·(2h + 1)`` (input and normalised output, plus the reciprocal std),
  attention ``5·H·d + H`` (q, k and v — k and v repeated to all H heads by grouped-query attention —, the attention
  output, the output projection's contiguous input, and H log-sum-exp values),
  MLP ``4·I`` for gated MLPs (gate, SiLU(gate), up, their product) and ``5·I`` for plain ones (GPT-2's tanh GELU
  keeps its intermediates), plus, for left- or right-padded batches, ``L + H·d`` (the CPU SDPA kernel's float mask
  row and a query copy) — with ``h`` hidden size, ``H`` heads, ``d`` head size, ``I`` MLP width, ``L`` sequence length;
  outside the blocks ``4h`` per token (embedding output, final norm). Elements are 4 bytes under float32 weights
  whether or not bf16 autocast is on (autocast keeps float32 norms and residuals and saves its bf16 casts too:
  4,248 against 4,376 bytes per token per layer measured), 2 bytes when the weights themselves are 16-bit;
  with gradient checkpointing only each block's input (``h``) is kept, plus one block's activations during its
  recompute; a LoRA adapter adds ``r`` per adapted projection (7 per Llama block);
- logits of a gradient forward over ``B`` sequences of ``L`` tokens whose last ``R`` positions enter the loss: the
  full float32 logits ``B·L·V`` (kept by the log-softmax, whose input is a slice of them) and, at the log-softmax's
  backward, two ``B·R·V`` float32 tensors (its exponentials and the gradient), the slice's backward then writing a
  full ``B·L·V`` gradient in their place; under bf16 autocast the bf16 logits stay too, with a float32 upcast of the
  slice; the entropy's softmax adds ``B·R·V``;
- the rollout: while generating, the KV cache ``2 · layers · B · T · H_kv · d`` elements of the generation dtype and
  the last position's float32 logits; while scoring (old, reference log-probs, no gradient), one micro-batch's full
  float32 logits and a log-softmax's ``B·R·V`` temporaries.

The run's peak is the larger of the rollout phase (all weights, training state, the larger of the KV cache and a
scoring forward's logits) and the update phase (all weights, training state, one micro-batch's activations and
logits). Allocator fragmentation, the framework's own
buffers and the Python process are not modelled: :func:`pick_micro_batch` keeps a margin for them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

GiB = 1024**3
BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
DEFAULT_MARGIN = 0.2
"""Share of the budget left unplanned by :func:`pick_micro_batch` (allocator slack, buffers, the estimate's error)."""


def dtype_bytes(name: str) -> int:
    """Bytes per element of a floating dtype named ``float32``, ``bfloat16``, ``float16`` or ``float64``."""
    try:
        return BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(BYTES)}") from None


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that memory depends on. ``params``: parameter count (tied embeddings once)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    gated_mlp: bool = True
    head_params: int = 0
    """Parameters of the LM head that the trunk does not hold: 0 with tied embeddings, ``vocab × hidden`` untied."""

    @classmethod
    def from_config(cls, config: Any, params: int | None = None) -> "ModelShape":
        """Read a transformers config (Llama-style names, or GPT-2's ``n_embd``/``n_layer``/``n_head``/``n_inner``).
        ``params`` defaults to :func:`decoder_params` of the shape."""
        get = lambda *names, default=None: next(  # noqa: E731
            (getattr(config, n) for n in names if getattr(config, n, None) is not None), default)
        hidden = int(get("hidden_size", "n_embd"))
        heads = int(get("num_attention_heads", "n_head"))
        gated = hasattr(config, "intermediate_size") and getattr(config, "model_type", "") != "gpt2"
        inter = int(get("intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden)
        shape = cls(layers=int(get("num_hidden_layers", "n_layer")), hidden=hidden, intermediate=inter, heads=heads,
                    kv_heads=int(get("num_key_value_heads", default=heads)),
                    head_dim=int(get("head_dim", default=hidden // heads)), vocab=int(get("vocab_size")), params=0,
                    gated_mlp=gated)
        tied = bool(get("tie_word_embeddings", default=True))
        return cls(**{**shape.__dict__, "params": params if params is not None else decoder_params(shape, tied),
                      "head_params": 0 if tied else shape.vocab * hidden})

    @classmethod
    def from_model(cls, model: Any) -> "ModelShape":
        """The shape of a loaded transformers model, with its parameters counted (shared tensors once)."""
        seen: set[int] = set()
        n = 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return cls.from_config(model.config, params=n)


def decoder_params(shape: ModelShape, tied: bool = True) -> int:
    """Parameter count of a Llama-style decoder: embeddings (and an untied LM head), per block the q/k/v/o and MLP
    projections and two norm weights, the final norm. Biases are not counted."""
    h, hd = shape.hidden, shape.head_dim
    attn = h * shape.heads * hd * 2 + h * shape.kv_heads * hd * 2
    mlp = (3 if shape.gated_mlp else 2) * h * shape.intermediate
    emb = shape.vocab * h * (1 if tied else 2)
    return emb + shape.layers * (attn + mlp + 2 * h) + h


def lora_params(shape: ModelShape, r: int) -> int:
    """Parameters of a rank-``r`` adapter on every block projection (q, k, v, o, gate, up, down): ``r·(in + out)``
    each."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    pairs = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (i, h)] + ([(h, i)] if shape.gated_mlp else [])
    return shape.layers * sum(r * (a + b) for a, b in pairs)


def weight_bytes(params: int, dtype: str) -> int:
    """Bytes of ``params`` weights held in ``dtype``."""
    return params * dtype_bytes(dtype)


def training_state_bytes(trainable: int, weight_dtype: str) -> int:
    """Bytes of the AdamW training state of ``trainable`` parameters: float32 gradient and two float32 moments
    (12 bytes each), plus a 4-byte float32 master copy when the weights are held in a 16-bit dtype."""
    master = 4 if dtype_bytes(weight_dtype) < 4 else 0
    return trainable * (4 + 8 + master)


def block_activation_elements(shape: ModelShape, seq_len: int, padded: bool = True, lora_rank: int = 0) -> int:
    """Elements autograd keeps per token for one transformer block (see the module docstring for each term)."""
    h, qd = shape.hidden, shape.heads * shape.head_dim
    n = 2 * (2 * h + 1) + 5 * qd + shape.heads + (4 if shape.gated_mlp else 5) * shape.intermediate
    if padded:
        n += seq_len + qd
    if lora_rank:
        n += lora_rank * (7 if shape.gated_mlp else 6)
    return n


def activation_bytes(shape: ModelShape, batch: int, seq_len: int, weight_dtype: str = "float32", *,
                     checkpointing: bool = False, padded: bool = True, lora_rank: int = 0) -> int:
    """Bytes of the activations kept for the backward of one forward over ``batch × seq_len`` tokens (logits apart).
    With ``checkpointing`` each block keeps only its input, and one block is live again during its recompute."""
    tokens = batch * seq_len
    size = dtype_bytes(weight_dtype)
    block = block_activation_elements(shape, seq_len, padded, lora_rank)
    outside = 4 * shape.hidden
    if checkpointing:
        per_token = shape.layers * shape.hidden + block + outside
    else:
        per_token = shape.layers * block + outside
    return tokens * per_token * size


def logits_bytes(batch: int, seq_len: int, vocab: int, loss_len: int | None = None, *, autocast_bf16: bool = False,
                 entropy: bool = False) -> int:
    """Bytes of logits live at the backward of a loss over the last ``loss_len`` (default ``seq_len``) of
    ``batch × seq_len`` positions: ``4·B·L·V + 8·B·R·V`` (see the module docstring), plus ``2·B·L·V + 4·B·R·V``
    under bf16 autocast and ``4·B·R·V`` with the entropy."""
    r = seq_len if loss_len is None else loss_len
    full, part = batch * seq_len * vocab, batch * r * vocab
    n = 4 * full + 8 * part
    if autocast_bf16:
        n += 2 * full + 4 * part
    if entropy:
        n += 4 * part
    return n


def scoring_logits_bytes(batch: int, seq_len: int, vocab: int, loss_len: int | None = None) -> int:
    """Bytes of a no-gradient scoring forward's logits (old or reference log-probs): the float32 logits ``B·L·V``
    and the log-softmax's ``B·R·V`` exponentials."""
    r = seq_len if loss_len is None else loss_len
    return 4 * batch * (seq_len + r) * vocab


def kv_cache_bytes(shape: ModelShape, batch: int, total_len: int, dtype: str = "float32") -> int:
    """Bytes of the key/value cache of ``batch`` sequences of ``total_len`` tokens: ``2·layers·B·T·H_kv·d``
    elements."""
    return 2 * shape.layers * batch * total_len * shape.kv_heads * shape.head_dim * dtype_bytes(dtype)


@dataclass(frozen=True)
class HeldModel:
    """One model the run holds. ``weights``: parameters stored (0 for a view of another model, e.g. the adapter-off
    reference or a value head's shared trunk); ``trainable``: parameters with gradients and optimizer state;
    ``trained_forward``: whether the update runs a gradient forward through it (activations; ``logits`` adds the
    LM logits)."""

    name: str
    shape: ModelShape
    weights: int
    weight_dtype: str = "float32"
    trainable: int = 0
    trained_forward: bool = False
    logits: bool = False
    lora_rank: int = 0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; ``peak`` is the larger of the two phases (``rollout``: generation and scoring)."""

    components: dict[str, int] = field(default_factory=dict)
    rollout: int = 0
    update: int = 0

    @property
    def peak(self) -> int:
        return max(self.rollout, self.update)

    def table(self) -> str:
        """A readable breakdown, GiB with two decimals."""
        rows = [f"{k:<28} {v / GiB:8.2f} GiB" for k, v in self.components.items()]
        rows += [f"{'rollout phase':<28} {self.rollout / GiB:8.2f} GiB",
                 f"{'update phase':<28} {self.update / GiB:8.2f} GiB",
                 f"{'peak':<28} {self.peak / GiB:8.2f} GiB"]
        return "\n".join(rows)


def value_head_params(shape: ModelShape) -> int:
    """A scalar value head on the trunk: ``hidden`` weights and a bias."""
    return shape.hidden + 1


def ppo_layout(policy: ModelShape, *, weight_dtype: str = "float32", reference_dtype: str | None = None,
               lora_rank: int = 0, critic: str = "separate", critic_lora_rank: int = 0,
               reward: ModelShape | None = None, reward_dtype: str | None = None) -> list[HeldModel]:
    """The models a PPO run holds, for :func:`estimate_peak` (the policy first).

    - policy: every parameter trainable, or with ``lora_rank`` its adapter (plus a shared value head) only;
    - reference: a frozen copy (``reference_dtype``, default ``weight_dtype``), or with LoRA the policy with its
      adapter off — no weights of its own;
    - critic ``separate``: its own trunk (the policy's size, no LM head) and value head, trainable (with
      ``critic_lora_rank``: a frozen trunk with its own adapter); ``shared``: a value head on the policy's trunk,
      no forward of its own; ``none``: critic-free estimators;
    - reward: a frozen reward model (its trunk and a 1-output head), when it is a model.
    """
    if critic not in ("separate", "shared", "none"):
        raise ValueError(f"critic must be separate, shared or none, got {critic!r}")
    ref_dtype = reference_dtype or weight_dtype
    head = value_head_params(policy) if critic == "shared" else 0
    adapter = lora_params(policy, lora_rank) if lora_rank else 0
    trainable = (adapter if lora_rank else policy.params) + head
    models = [HeldModel("policy", policy, weights=policy.params + adapter + head, weight_dtype=weight_dtype,
                        trainable=trainable, trained_forward=True, logits=True, lora_rank=lora_rank),
              HeldModel("reference", policy, weights=0 if lora_rank else policy.params, weight_dtype=ref_dtype)]
    if critic == "separate":
        trunk = policy.params - policy.head_params
        vhead = value_head_params(policy)
        own = lora_params(policy, critic_lora_rank) if critic_lora_rank else 0
        models.append(HeldModel("critic", policy, weights=trunk + own + vhead, weight_dtype=weight_dtype,
                                trainable=(own if critic_lora_rank else trunk) + vhead, trained_forward=True,
                                lora_rank=critic_lora_rank))
    if reward is not None:
        models.append(HeldModel("reward", reward, weights=reward.params - reward.head_params + 1,
                                weight_dtype=reward_dtype or ref_dtype))
    return models


def estimate_peak(models: Sequence[HeldModel], *, micro_batch: int, seq_len: int, generation_batch: int = 0,
                  generation_len: int = 0, generation_dtype: str = "float32", autocast_bf16: bool = False,
                  checkpointing: bool = False, padded: bool = True, entropy: bool = False,
                  loss_len: int | None = None, scoring: bool = True) -> MemoryEstimate:
    """Peak bytes of a run holding ``models``.

    ``micro_batch × seq_len``: the sequences (query + response) of one forward; ``loss_len``: the last positions whose
    logits enter the loss (PPO: the response length; SFT: every position, the default). ``generation_batch ×
    generation_len``: the batch sampled at once and its final length (0 for stages that do not generate);
    ``scoring``: whether no-gradient scoring forwards run on micro-batches (PPO's old and reference log-probs). The
    rollout phase holds every model's weights, the training state and the larger of the first model's (the policy's)
    KV cache and a scoring forward's logits; the update phase the weights, the training state and the activations
    (and logits) of every ``trained_forward`` model.
    """
    if micro_batch < 1 or seq_len < 1:
        raise ValueError("micro_batch and seq_len must be ≥ 1")
    comp: dict[str, int] = {}
    for m in models:
        comp[f"weights/{m.name}"] = weight_bytes(m.weights, m.weight_dtype)
        if m.trainable:
            comp[f"training_state/{m.name}"] = training_state_bytes(m.trainable, m.weight_dtype)
    held = sum(comp.values())
    update = held
    for m in models:
        if m.trained_forward:
            act = activation_bytes(m.shape, micro_batch, seq_len, m.weight_dtype, checkpointing=checkpointing,
                                   padded=padded, lora_rank=m.lora_rank)
            comp[f"activations/{m.name}"] = act
            update += act
            if m.logits:
                lg = logits_bytes(micro_batch, seq_len, m.shape.vocab, loss_len, autocast_bf16=autocast_bf16,
                                  entropy=entropy)
                comp[f"logits/{m.name}"] = lg
                update += lg
    transient = 0
    if generation_batch and generation_len and models:
        comp["kv_cache"] = kv_cache_bytes(models[0].shape, generation_batch, generation_len, generation_dtype)
        comp["generation_logits"] = generation_batch * models[0].shape.vocab * 4
        transient = comp["kv_cache"] + comp["generation_logits"]
    if scoring and models:
        comp["scoring_logits"] = scoring_logits_bytes(micro_batch, seq_len, models[0].shape.vocab, loss_len)
        transient = max(transient, comp["scoring_logits"])
    rollout = held + transient if (generation_batch or scoring) else 0
    return MemoryEstimate(comp, rollout=rollout, update=update)


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` ≥ 1, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def pick_micro_batch(peak_for: Callable[[int], int], minibatch_size: int, budget: int,
                     margin: float = DEFAULT_MARGIN) -> int | None:
    """The largest divisor ``m`` of ``minibatch_size`` (micro-batches must split a minibatch evenly) with
    ``peak_for(m) ≤ budget · (1 − margin)``; ``None`` if not even ``m = 1`` fits. ``peak_for`` maps a micro-batch
    size to peak bytes (e.g. ``lambda m: estimate_peak(models, micro_batch=m, ...).peak``)."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    limit = budget * (1 - margin)
    best = None
    for m in divisors(minibatch_size):
        if peak_for(m) <= limit:
            best = m
        else:
            break  # peaks grow with m
    return best


def memory_budget(device: Any = "cpu") -> int:
    """Bytes this process may use on ``device``: on CUDA the free device memory plus what torch already reserved;
    on CPU ``MemAvailable`` of /proc/meminfo plus this process's resident memory (the estimate counts what the process
    already holds)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    avail = _meminfo_kib("MemAvailable")
    rss = _status_kib("VmRSS")
    if avail is None:
        raise ValueError("cannot read MemAvailable from /proc/meminfo; give the memory budget explicitly")
    return (avail + (rss or 0)) * 1024


def _meminfo_kib(key: str, path: str = "/proc/meminfo") -> int | None:
    return _kib(path, key)


def _status_kib(key: str) -> int | None:
    return _kib(f"/proc/{os.getpid()}/status", key)


def _kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
