"""Gradient checkpointing that takes effect (tether.models.checkpointing): fewer saved activations, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tether.config.lora import LoraConfig
from tether.models.checkpointing import active_dropout, checkpointing_enabled, enable_checkpointing, grad_forward
from tether.models.forward import causal_lm_logits
from tether.models.load import ensure_pad_token
from tether.models.lora import wrap_lora
from tether.models.value import ValueModel


def _saved_activation_bytes_and_grads(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, train_mode: bool):
    """Bytes of the distinct non-parameter tensors autograd keeps for the backward of one forward (counted by storage
    through ``saved_tensors_hooks``, which see what the graph holds outside checkpointed blocks), and the gradients."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            held[ptr] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    ctx = grad_forward(model) if train_mode else torch.enable_grad()
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = causal_lm_logits(model, ids, mask)
    loss = (logits.float().logsumexp(-1) * mask).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(held.values()), grads


def _inputs(tok, n=4):
    ensure_pad_token(tok)
    tok.padding_side = "left"
    texts = ["The movie was", "I think that the film was really quite", "Honestly", "My favourite scene is the"][:n]
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_checkpointing_lowers_saved_activations_only_in_grad_forward_and_keeps_gradients(gpt2_tok, make_llama,
                                                                                       make_gpt2, family):
    make = make_llama if family == "llama" else make_gpt2
    model = make(len(gpt2_tok) + 1, layers=4, hidden=64)  # loaded the way tether loads models: eval mode
    ids, mask = _inputs(gpt2_tok)
    full, g_full = _saved_activation_bytes_and_grads(model, ids, mask, train_mode=False)
    assert not checkpointing_enabled(model)
    enable_checkpointing(model)
    assert checkpointing_enabled(model) and not model.training
    ignored, _ = _saved_activation_bytes_and_grads(model, ids, mask, train_mode=False)
    assert ignored == full  # the bug: in eval mode transformers skips checkpointing silently
    ckpt, g_ckpt = _saved_activation_bytes_and_grads(model, ids, mask, train_mode=True)
    assert not model.training  # grad_forward restores the mode
    assert ckpt < 0.5 * full, (ckpt, full)
    assert g_ckpt.keys() == g_full.keys()
    for name, g in g_full.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-6, atol=1e-6, msg=name)


def test_checkpointing_under_lora_and_on_a_critic_trunk(gpt2_tok, make_llama):
    ids, mask = _inputs(gpt2_tok)
    model = make_llama(len(gpt2_tok) + 1, layers=4, hidden=64)
    wrapped = wrap_lora(model, LoraConfig(r=4))
    full, g_full = _saved_activation_bytes_and_grads(model, ids, mask, train_mode=True)
    enable_checkpointing(wrapped)  # through the peft wrapper: the transformers model inside gets the flag
    ckpt, g_ckpt = _saved_activation_bytes_and_grads(model, ids, mask, train_mode=True)
    assert ckpt < 0.5 * full
    assert g_full and g_ckpt.keys() == g_full.keys() and all("lora_" in n for n in g_full)
    for name, g in g_full.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-6, atol=1e-6, msg=name)
    critic = ValueModel.from_pretrained_model(make_llama(len(gpt2_tok) + 1, seed=2))
    enable_checkpointing(critic)
    assert checkpointing_enabled(critic.trunk)


def test_grad_forward_refuses_live_dropout_and_enable_refuses_plain_modules(gpt2_tok, make_gpt2):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.1)).eval()
    assert active_dropout(model)
    with pytest.raises(ValueError, match="dropout is active"):
        with grad_forward(model):
            pass
    assert not model.training
    with pytest.raises(ValueError, match="supports gradient checkpointing"):
        enable_checkpointing(nn.Linear(2, 2))


def test_generation_still_uses_the_cache_with_checkpointing_on(gpt2_tok, make_gpt2):
    """Generation runs in eval mode, where the flag does nothing: same tokens with and without it."""
    model = make_gpt2(len(gpt2_tok) + 1)
    ids, mask = _inputs(gpt2_tok, 2)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = model.generate(ids, **kw)
    enable_checkpointing(model)
    assert torch.equal(model.generate(ids, **kw), want)
