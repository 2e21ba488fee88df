"""The memory planner (tether.plan.memory): hand-computed cases, and the activation count against what autograd
really keeps (saved_tensors_hooks on tiny models with the real GPT-2 tokenizer's vocabulary size)."""

from __future__ import annotations

import pytest
import torch

from tether.models.forward import causal_lm_logits
from tether.plan import memory as M

# SmolLM2-135M-Instruct's config.json: 30 layers, d 576, MLP 1536, 9 heads, 3 KV heads, vocab 49152, tied
SMOLLM2 = M.ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152,
                       params=134_515_008)


def test_dtype_bytes():
    assert [M.dtype_bytes(d) for d in ("float32", "bfloat16", "float16", "float64")] == [4, 2, 2, 8]
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        M.dtype_bytes("int8")


def test_smollm2_parameter_count_by_hand():
    # 49152·576 embeddings (tied) + 30 × (576·576·2 + 576·192·2 + 3·576·1536 + 2·576) + 576
    assert M.decoder_params(SMOLLM2) == 28_311_552 + 30 * 3_540_096 + 576 == 134_515_008
    assert M.decoder_params(SMOLLM2, tied=False) == 134_515_008 + 28_311_552


@pytest.mark.parametrize("tied", [True, False])
def test_shape_from_config_counts_a_real_llama(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    shape = M.ModelShape.from_config(cfg)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim,
            shape.vocab, shape.gated_mlp) == (2, 32, 64, 4, 2, 8, 1000, True)
    assert shape.params == M.ModelShape.from_model(model).params == sum(p.numel() for p in model.parameters())
    assert shape.head_params == (0 if tied else 1000 * 32)


def test_shape_from_gpt2_config(make_gpt2):
    model = make_gpt2(1000, hidden=64, layers=3)
    shape = M.ModelShape.from_model(model)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim,
            shape.gated_mlp) == (3, 64, 256, 4, 4, 16, False)
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied wte/lm_head counted once


def test_lora_params_by_hand():
    # r·(in+out) for q (576→576), k, v (576→192), o (576→576), gate, up (576→1536), down (1536→576), per layer
    r = 16
    per_layer = r * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 3 * (576 + 1536))
    assert M.lora_params(SMOLLM2, r) == 30 * per_layer == 30 * 16 * 10_176


def test_training_state_and_weights():
    assert M.weight_bytes(1000, "bfloat16") == 2000
    assert M.training_state_bytes(1000, "float32") == 12_000  # grad + two AdamW moments, float32
    assert M.training_state_bytes(1000, "bfloat16") == 16_000  # + the float32 master copy


def test_block_activations_by_hand():
    shape = M.ModelShape(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=1000,
                         params=0)
    # 2·(2·64 + 1) + 5·64 + 4 + 4·128 = 258 + 320 + 4 + 512
    assert M.block_activation_elements(shape, 32, padded=False) == 1094
    assert M.block_activation_elements(shape, 32, padded=True) == 1094 + 32 + 64
    assert M.block_activation_elements(shape, 32, padded=False, lora_rank=8) == 1094 + 56
    # 2 sequences × 32 tokens × (4 blocks × 1094 + 4·64 outside) × 4 bytes
    assert M.activation_bytes(shape, 2, 32, padded=False) == 64 * (4 * 1094 + 256) * 4
    # checkpointing: each block's input (64) + one block live + outside
    assert M.activation_bytes(shape, 2, 32, padded=False, checkpointing=True) == 64 * (4 * 64 + 1094 + 256) * 4
    assert M.activation_bytes(shape, 2, 32, "bfloat16", padded=False) == 64 * (4 * 1094 + 256) * 2


def _saved_bytes(model, ids, mask):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            held[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_logits(model, ids, mask)
    return sum(held.values())


@pytest.mark.parametrize("padded", [False, True])
def test_llama_block_count_equals_what_autograd_keeps(gpt2_tok, make_llama, padded):
    """Oracle: the bytes a real Llama block keeps for its backward (two depths, so the difference is one block's)."""
    vocab, batch, length = len(gpt2_tok), 2, 24
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :5] = 0
    kept = {}
    for layers in (2, 4):
        model = make_llama(vocab, hidden=64, layers=layers)
        kept[layers] = _saved_bytes(model, ids, mask)
    shape = M.ModelShape.from_model(model)
    per_block = (kept[4] - kept[2]) / 2 / (batch * length * 4)
    assert per_block == M.block_activation_elements(shape, length, padded=padded)
    whole = M.activation_bytes(shape, batch, length, padded=padded)
    assert abs(whole - kept[4]) / kept[4] < 0.02


def test_gpt2_block_count_is_close_to_what_autograd_keeps(gpt2_tok, make_gpt2):
    vocab, batch, length = len(gpt2_tok), 2, 24
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    kept = {layers: _saved_bytes(make_gpt2(vocab, hidden=64, layers=layers), ids, mask) for layers in (2, 4)}
    shape = M.ModelShape.from_model(make_gpt2(vocab, hidden=64, layers=4))
    per_block = (kept[4] - kept[2]) / 2 / (batch * length * 4)
    est = M.block_activation_elements(shape, length, padded=False)
    assert per_block <= est <= 1.05 * per_block  # plain MLPs: 5·I is a slight over-count of GPT-2's GELU


def test_logits_and_kv_cache_by_hand():
    # full float32 logits 2·10·100, then two float32 tensors over the 4 loss positions
    assert M.logits_bytes(2, 10, 100, 4) == 4 * 2000 + 8 * 800
    assert M.logits_bytes(2, 10, 100) == 12 * 2000  # SFT: every position in the loss
    assert M.logits_bytes(2, 10, 100, 4, autocast_bf16=True, entropy=True) == 6 * 2000 + 16 * 800
    assert M.scoring_logits_bytes(2, 10, 100, 4) == 4 * (2000 + 800)
    # 2 (k, v) · 30 layers · 8 sequences · 100 tokens · 3 KV heads · 64 · 4 bytes
    assert M.kv_cache_bytes(SMOLLM2, 8, 100) == 36_864_000
    assert M.kv_cache_bytes(SMOLLM2, 8, 100, "bfloat16") == 18_432_000


def test_estimate_peak_ppo_with_lora_by_hand():
    """SmolLM2 policy with a rank-16 adapter, reference = the adapter switched off (no weights), shared value head;
    64-token queries, 48-token responses, 16 sampled at once, micro-batch 4."""
    r, lora = 16, M.lora_params(SMOLLM2, 16)
    models = [
        M.HeldModel("policy", SMOLLM2, weights=SMOLLM2.params + lora, trainable=lora + 577, trained_forward=True,
                    logits=True, lora_rank=r),
        M.HeldModel("reference", SMOLLM2, weights=0),
    ]
    est = M.estimate_peak(models, micro_batch=4, seq_len=112, generation_batch=16, generation_len=112, loss_len=48)
    weights = (SMOLLM2.params + lora) * 4
    state = (lora + 577) * 12
    act = 4 * 112 * (30 * (M.block_activation_elements(SMOLLM2, 112, lora_rank=r)) + 4 * 576) * 4
    logits = 4 * 4 * 112 * 49152 + 8 * 4 * 48 * 49152
    kv = 2 * 30 * 16 * 112 * 3 * 64 * 4
    scoring = 4 * 4 * (112 + 48) * 49152
    assert est.components == {"weights/policy": weights, "training_state/policy": state, "weights/reference": 0,
                              "activations/policy": act, "logits/policy": logits, "kv_cache": kv,
                              "generation_logits": 16 * 49152 * 4, "scoring_logits": scoring}
    assert est.update == weights + state + act + logits
    assert est.rollout == weights + state + max(kv + 16 * 49152 * 4, scoring)
    assert est.peak == max(est.update, est.rollout)
    assert "peak" in est.table()
    four_full = [M.HeldModel(n, SMOLLM2, weights=SMOLLM2.params, trainable=SMOLLM2.params if n != "reference"
                             else 0, trained_forward=n != "reference", logits=n == "policy")
                 for n in ("policy", "reference", "critic")]
    full = M.estimate_peak(four_full, micro_batch=4, seq_len=112, generation_batch=16, generation_len=112,
                           loss_len=48)
    assert est.peak < 0.5 * full.peak  # LoRA without a reference copy: weights once, state of the adapter only
    sft = M.estimate_peak(models[:1], micro_batch=4, seq_len=112, scoring=False)
    assert sft.rollout == 0 and sft.peak == sft.update


def test_ppo_layouts_by_hand():
    p, head = SMOLLM2.params, 577
    full = M.ppo_layout(SMOLLM2)
    assert [(m.name, m.weights, m.trainable, m.trained_forward, m.logits) for m in full] == [
        ("policy", p, p, True, True), ("reference", p, 0, False, False), ("critic", p + head, p + head, True, False)]
    lora = M.ppo_layout(SMOLLM2, lora_rank=16, critic="shared", reward=SMOLLM2, reward_dtype="bfloat16")
    a = M.lora_params(SMOLLM2, 16)
    assert [(m.name, m.weights, m.trainable, m.weight_dtype) for m in lora] == [
        ("policy", p + a + head, a + head, "float32"), ("reference", 0, 0, "float32"),
        ("reward", p + 1, 0, "bfloat16")]
    own = M.ppo_layout(SMOLLM2, lora_rank=16, critic="separate", critic_lora_rank=8)
    assert (own[2].weights, own[2].trainable, own[2].lora_rank) == (p + M.lora_params(SMOLLM2, 8) + head,
                                                                     M.lora_params(SMOLLM2, 8) + head, 8)
    untied = M.ModelShape(**{**SMOLLM2.__dict__, "params": p + 49152 * 576, "head_params": 49152 * 576})
    assert M.ppo_layout(untied)[2].weights == p + head  # the critic's trunk has no LM head
    assert M.ppo_layout(SMOLLM2, critic="none")[-1].name == "reference"
    with pytest.raises(ValueError, match="critic must be"):
        M.ppo_layout(SMOLLM2, critic="twin")


def test_pick_micro_batch():
    peak = lambda m: 100 + 10 * m  # noqa: E731
    assert M.divisors(12) == [1, 2, 3, 4, 6, 12]
    assert M.pick_micro_batch(peak, 12, budget=200, margin=0.2) == 6  # 160 allowed: 6 → 160, 12 → 220
    assert M.pick_micro_batch(peak, 12, budget=1000) == 12
    assert M.pick_micro_batch(peak, 12, budget=100) is None
    with pytest.raises(ValueError, match="margin"):
        M.pick_micro_batch(peak, 12, budget=100, margin=1.0)


def test_planner_checkpointing_allows_a_larger_micro_batch():
    models = [M.HeldModel("policy", SMOLLM2, weights=SMOLLM2.params, trainable=SMOLLM2.params,
                          trained_forward=True, logits=True)]

    def peak(ckpt):
        return lambda m: M.estimate_peak(models, micro_batch=m, seq_len=512, checkpointing=ckpt).peak

    budget = 8 * M.GiB
    plain, ckpt = M.pick_micro_batch(peak(False), 64, budget), M.pick_micro_batch(peak(True), 64, budget)
    assert plain is not None and ckpt is not None and ckpt > plain


def test_memory_budget_cpu_is_positive():
    assert M.memory_budget("cpu") > 0


def test_plan_imports_no_model_code():
    import subprocess
    import sys

    code = ("import sys, tether.plan.memory\n"
            "assert not [m for m in ('transformers', 'peft', 'torch') if m in sys.modules]\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
