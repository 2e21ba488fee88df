"""benchmarks/ppo_vs_trl.py's ForwardCounter (the "same work on both sides" figures): every trunk in memory is
found once, generation steps and full-sequence forwards without and with gradients are told apart, in calls and
rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo_vs_trl.py"


def test_counts_generation_steps_and_full_forwards():
    spec = importlib.util.spec_from_file_location("ppo_vs_trl", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    policy, value = LlamaForCausalLM(cfg), LlamaForSequenceClassification(cfg)
    counter = bench.ForwardCounter(full_len=6)
    assert {id(policy.model), id(value.model)} <= {id(t) for t in counter.trunks}
    before = counter.snapshot()["trunks_in_memory"]
    ids = torch.randint(1, 64, (3, 6))
    with torch.no_grad():
        policy.generate(ids[:, :2], attention_mask=torch.ones(3, 2, dtype=torch.long), max_new_tokens=4,
                        do_sample=False, pad_token_id=0)  # prompt pass + 3 cached steps, 3 rows each
        value(ids)
    policy(ids[:2]).logits.sum().backward()
    got = counter.snapshot()
    assert got == {"generation_calls": 4, "sampled_tokens": 12, "full_nograd_calls": 1, "full_nograd_rows": 3,
                   "full_grad_calls": 1, "full_grad_rows": 2, "trunks_in_memory": before, "trunks_used": 2}
    counter.reset()
    assert counter.snapshot()["generation_calls"] == 0 and counter.snapshot()["trunks_used"] == 0
