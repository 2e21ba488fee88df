"""LoRA through peft (tether.models.lora): exactness of the adapter-off reference, ratio 1 / KL 0 before any step,
merge, save/reload, what trains."""

from __future__ import annotations

import json

import pytest
import torch

from tether import ops
from tether.config.lora import LoraConfig
from tether.errors import ModelError
from tether.models.forward import causal_lm_logits
from tether.models.load import ensure_pad_token, load_causal_lm, resize_for_tokenizer
from tether.models.lora import (
    ADAPTER_WEIGHTS,
    MERGED_DIR,
    AdapterOffReference,
    adapter_disabled,
    adapter_state_dict,
    is_adapter_run,
    load_adapter_run,
    load_adapter_state,
    lora_target_names,
    save_adapter,
    trainable_parameter_names,
    wrap_critic_lora,
    wrap_lora,
)
from tether.models.value import ValueModel

LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _batch(tok, texts=("The movie was", "I think that the film was really")):
    tok.padding_side = "left"
    enc = tok(list(texts), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _saved_base(tmp_path, tok, make_model, name="base"):
    """A tiny model saved to disk and loaded back the way trainers load it (dropout off, eval mode)."""
    ensure_pad_token(tok)
    model = make_model(len(tok))
    out = tmp_path / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return load_causal_lm(out), out


def _perturb_adapter(peft_model, seed=1, scale=0.05):
    """Move every B factor off zero, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _logits(model, ids, mask):
    with torch.no_grad():
        return causal_lm_logits(model, ids, mask)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapter_on_before_training_and_off_always_equal_the_base_exactly(tmp_path, gpt2_tok, make_llama, make_gpt2,
                                                                          family):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama if family == "llama" else make_gpt2)
    ids, mask = _batch(gpt2_tok)
    want = _logits(base, ids, mask).clone()
    wrapped = wrap_lora(base, LoraConfig(r=4, alpha=8))
    assert torch.equal(_logits(base, ids, mask), want)  # B = 0: the adapter adds an exact zero
    _perturb_adapter(wrapped)
    on = _logits(base, ids, mask)
    assert not torch.allclose(on, want)  # the adapter now changes the outputs ...
    with adapter_disabled(wrapped):
        assert torch.equal(_logits(base, ids, mask), want)  # ... and switched off, the base comes back bit for bit
    assert torch.equal(_logits(base, ids, mask), on)  # back on after the block
    ref = AdapterOffReference(wrapped)
    assert torch.equal(_logits(ref, ids, mask), want)


def test_ratio_exactly_one_and_kl_zero_before_any_step(tmp_path, gpt2_tok, make_llama):
    """The PPO invariants under LoRA: policy = adapted model, reference = the same model with the adapter off."""
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    wrapped = wrap_lora(base, LoraConfig(r=8, alpha=16))
    ref = AdapterOffReference(wrapped)
    ids, mask = _batch(gpt2_tok, ("Hello there, this", "The movie was great and I"))
    q = 3
    tokens = ids[:, q:]
    old = ops.logprobs_from_logits(_logits(base, ids, mask)[:, q - 1 : -1], tokens, temperature=0.7)
    ref_lp = ops.logprobs_from_logits(_logits(ref, ids, mask)[:, q - 1 : -1], tokens, temperature=0.7)
    base.train()  # the trainer's forward, with gradients
    new = ops.logprobs_from_logits(causal_lm_logits(base, ids, mask)[:, q - 1 : -1], tokens, temperature=0.7)
    resp = mask[:, q:].bool()
    ratio = torch.exp(new - old)[resp]
    assert torch.equal(ratio, torch.ones_like(ratio))
    kl = ops.kl_penalty(old, ref_lp, "k1")[resp]
    assert torch.equal(kl, torch.zeros_like(kl))
    new.sum().backward()  # gradients reach the adapter only
    grads = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_only_adapter_parameters_train_and_their_count(tmp_path, gpt2_tok, make_llama):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    r = 4
    wrapped = wrap_lora(base, LoraConfig(r=r))
    names = trainable_parameter_names(wrapped)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # hand count: per layer, every projection (in, out) gets r·in + out·r parameters
    h, i, kv = 32, 64, 2 * (32 // 4)  # hidden, intermediate, k/v width (2 kv heads × head dim 8)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    per_layer = sum(r * a + b * r for a, b in shapes)
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == 2 * per_layer
    assert not any(p.requires_grad for n, p in wrapped.named_parameters() if "lora_" not in n)


def test_default_targets_are_every_block_projection_per_family(tmp_path, gpt2_tok, make_llama, make_gpt2):
    llama, _ = _saved_base(tmp_path, gpt2_tok, make_llama, "llama")
    wrap_lora(llama, LoraConfig())
    assert lora_target_names(llama) == LLAMA_TARGETS  # not lm_head
    gpt2, _ = _saved_base(tmp_path, gpt2_tok, make_gpt2, "gpt2")
    wrap_lora(gpt2, LoraConfig())
    assert lora_target_names(gpt2) == {"c_attn", "c_proj", "c_fc"}
    chosen, _ = _saved_base(tmp_path, gpt2_tok, make_llama, "chosen")
    wrap_lora(chosen, LoraConfig(target_modules=["q_proj", "v_proj"]))
    assert lora_target_names(chosen) == {"q_proj", "v_proj"}


def test_bad_targets_and_double_wrapping_are_one_line_errors(tmp_path, gpt2_tok, make_llama):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    with pytest.raises(ModelError, match="lora.target_modules"):
        wrap_lora(base, LoraConfig(target_modules=["no_such_proj"]))
    base2, _ = _saved_base(tmp_path, gpt2_tok, make_llama, "b2")
    wrap_lora(base2, LoraConfig())
    with pytest.raises(ModelError, match="already carries a peft adapter"):
        wrap_lora(base2, LoraConfig())


def test_config_validation():
    with pytest.raises(ValueError, match="target_modules"):
        LoraConfig(target_modules=[])
    with pytest.raises(ValueError, match="r"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraConfig(dropout=1.0)


def test_merged_model_equals_adapter_on_and_loads_without_peft(tmp_path, gpt2_tok, make_llama):
    from transformers import AutoModelForCausalLM

    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    wrapped = wrap_lora(base, LoraConfig(r=4, alpha=8))
    _perturb_adapter(wrapped)
    ids, mask = _batch(gpt2_tok)
    on = _logits(base, ids, mask)
    out = save_adapter(wrapped, tmp_path / "run", gpt2_tok, merged=True)
    plain = AutoModelForCausalLM.from_pretrained(out / MERGED_DIR).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(_logits(plain, ids, mask), on, rtol=1e-5, atol=1e-5)
    assert torch.equal(_logits(base, ids, mask), on)  # merging worked on a copy: the adapted model is unchanged


def test_adapter_run_round_trip(tmp_path, gpt2_tok, make_llama):
    base, base_dir = _saved_base(tmp_path, gpt2_tok, make_llama)
    wrapped = wrap_lora(base, LoraConfig(r=4, alpha=8))
    _perturb_adapter(wrapped)
    ids, mask = _batch(gpt2_tok)
    on = _logits(base, ids, mask)
    run = save_adapter(wrapped, tmp_path / "run", gpt2_tok)
    assert is_adapter_run(run) and (run / ADAPTER_WEIGHTS).is_file() and not (run / MERGED_DIR).exists()
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir.resolve())
    back, tok = load_adapter_run(run)
    assert len(tok) == len(gpt2_tok)
    assert not back.get_base_model().training
    assert torch.equal(_logits(back.get_base_model(), ids, mask), on)
    assert not any(p.requires_grad for p in back.parameters())  # loaded for eval by default
    again, _ = load_adapter_run(run, trainable=True)
    assert all("lora_" in n for n in trainable_parameter_names(again)) and trainable_parameter_names(again)


def test_added_pad_token_rows_are_saved_with_the_adapter(tmp_path, gpt2_tok, make_llama):
    """The base on disk has no pad token; the run adds one (a new embedding row, random init): the reloaded adapter
    run must give the same logits, so the resized embeddings travel with the adapter."""
    model = make_llama(len(gpt2_tok))
    model.save_pretrained(tmp_path / "base")
    gpt2_tok.save_pretrained(tmp_path / "base")
    base = load_causal_lm(tmp_path / "base")
    assert ensure_pad_token(gpt2_tok)
    resize_for_tokenizer(base, gpt2_tok)
    wrapped = wrap_lora(base, LoraConfig(r=4))
    _perturb_adapter(wrapped)
    ids, mask = _batch(gpt2_tok)
    on = _logits(base, ids, mask)
    run = save_adapter(wrapped, tmp_path / "run", gpt2_tok)
    back, tok = load_adapter_run(run)
    assert tok.pad_token_id == len(tok) - 1
    assert torch.equal(_logits(back.get_base_model(), ids, mask), on)
    # resuming from a checkpoint's adapter state: the base is resized again (other random rows), the state restores
    torch.manual_seed(123)
    other = load_causal_lm(tmp_path / "base")
    resize_for_tokenizer(other, gpt2_tok)
    fresh = wrap_lora(other, LoraConfig(r=4))
    assert not torch.equal(_logits(other, ids, mask), on)
    load_adapter_state(fresh, adapter_state_dict(wrapped))
    assert torch.equal(_logits(other, ids, mask), on)


def test_adapter_state_round_trip_for_checkpoints(tmp_path, gpt2_tok, make_llama):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    wrapped = wrap_lora(base, LoraConfig(r=4))
    _perturb_adapter(wrapped, seed=3)
    state = adapter_state_dict(wrapped)
    assert state and all("lora_" in k for k in state)
    ids, mask = _batch(gpt2_tok)
    want = _logits(base, ids, mask)
    other, _ = _saved_base(tmp_path, gpt2_tok, make_llama, "other")
    fresh = wrap_lora(other, LoraConfig(r=4))
    load_adapter_state(fresh, state)
    assert torch.equal(_logits(other, ids, mask), want)


def test_critic_with_its_own_adapter(tmp_path, gpt2_tok, make_llama):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    critic = ValueModel.from_pretrained_model(base)
    with torch.no_grad():
        critic.head.weight.normal_()  # a head that reads the trunk, so the trunk's outputs show
    ids, mask = _batch(gpt2_tok)
    with torch.no_grad():
        want = critic(ids, mask)
    wrapped = wrap_critic_lora(critic, LoraConfig(r=4))
    names = trainable_parameter_names(critic)
    assert {"head.weight", "head.bias"} <= set(names)
    assert all(n.startswith("head.") or "lora_" in n for n in names)
    with torch.no_grad():
        assert torch.equal(critic(ids, mask), want)
    _perturb_adapter(wrapped)
    with torch.no_grad(), adapter_disabled(wrapped):
        assert torch.equal(critic(ids, mask), want)


def test_reference_view_holds_no_weights_and_leaves_the_policy_mode(tmp_path, gpt2_tok, make_llama):
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    wrapped = wrap_lora(base, LoraConfig(r=4))
    ref = AdapterOffReference(wrapped)
    assert list(ref.parameters()) == [] and ref.state_dict() == {}
    base.train()
    ref.eval().requires_grad_(False).to(torch.bfloat16)
    assert base.training and trainable_parameter_names(wrapped)
    assert all(p.dtype == torch.float32 for p in base.parameters())
    assert ref.get_output_embeddings() is base.get_output_embeddings()
    ids, mask = _batch(gpt2_tok)
    assert not _logits(ref, ids, mask).requires_grad


def test_load_errors_are_one_line(tmp_path, gpt2_tok, make_llama):
    with pytest.raises(ModelError, match="adapter_config.json: not found"):
        load_adapter_run(tmp_path)
    base, _ = _saved_base(tmp_path, gpt2_tok, make_llama)
    run = save_adapter(wrap_lora(base, LoraConfig(r=4)), tmp_path / "run", gpt2_tok)
    (run / ADAPTER_WEIGHTS).rename(run / "adapter_model.bin")
    with pytest.raises(ModelError, match="safetensors only"):
        load_adapter_run(run)
    (run / "adapter_model.bin").rename(run / ADAPTER_WEIGHTS)
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (run / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="records no base model"):
        load_adapter_run(run)


def test_reference_view_runs_without_dropout_while_the_policy_trains(tmp_path, gpt2_tok):
    """DPO trains its policy in train mode; the adapter-off reference must stay deterministic (eval mode, as a frozen
    copy would be) and hand the policy back in train mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ensure_pad_token(gpt2_tok)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt2_tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    wrapped = wrap_lora(base, LoraConfig(r=4))
    ids, mask = _batch(gpt2_tok)
    base.eval()
    want = _logits(base, ids, mask)
    base.train()
    ref = AdapterOffReference(wrapped)
    first, second = _logits(ref, ids, mask), _logits(ref, ids, mask)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert base.training and all(m.training for m in base.modules())
    assert not torch.equal(_logits(base, ids, mask), want)  # the control: in train mode the policy does drop out
