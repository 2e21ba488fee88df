"""Held-out evaluation as the run loop runs it (tether.eval.heldout): due every ``eval_every`` updates and at the
last, merged into metrics.jsonl, and the ``best/`` model saved when an evaluation beats every earlier one — also
across a resume, where the earlier records set the bar."""

from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import load_file

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.ppo import PPOConfig

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is"]
SCRIPT: list[float] = []
"""The value the scripted judge gives every completion, one entry per evaluation."""


def scripted(texts):
    value = SCRIPT.pop(0)
    return [value] * len(texts)


def make(tmp_path, tok, model, **overrides):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hello there", "The weather is"]))
    monitor = {"preflight": False, "tensorboard": False, "report": False, "eval_every": 1,
               "eval_prompts": str(held), "judges": ["test_heldout:scripted"]}
    cfg = dict(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=4,
               num_updates=3, num_ppo_epochs=1, progress=False, sample_every=0, seed=0, monitor=monitor, lr=1e-2)
    cfg.update(overrides)
    return PPOTrainer(PPOConfig(**cfg), policy=model, tokenizer=tok, reward=lambda p, c: [float(len(x)) for x in c],
                      prompts=PROMPTS)


def policy_weights(path):
    return load_file(str(path / "model.safetensors"))


def test_best_model_is_the_best_evaluation(tmp_path, gpt2_tok, make_llama):
    SCRIPT[:] = [1.0, 3.0, 2.0]
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1))
    snapshots = []
    for _ in range(3):
        m = tr.step()
        assert m["eval/scripted"] == [1.0, 3.0, 2.0][len(snapshots)] and "eval/proxy" in m
        snapshots.append({k: v.detach().clone() for k, v in tr.policy.state_dict().items()})
    best = policy_weights(tmp_path / "run" / "best")
    for k, v in best.items():  # the weights after update 2, not those after update 3
        assert torch.equal(v, snapshots[1][k]), k
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in best)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/scripted"] for r in logged] == [1.0, 3.0, 2.0]


def test_resumed_run_keeps_the_bar_of_the_earlier_evaluations(tmp_path, gpt2_tok, make_llama):
    SCRIPT[:] = [1.0, 3.0]
    vocab = len(gpt2_tok) + 1
    tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(vocab))
    tr.step()
    tr.step()
    tr.save_checkpoint()
    before = policy_weights(tmp_path / "run" / "best")
    SCRIPT[:] = [2.5]  # below the 3.0 of update 2: a fresh tracker would take it as the best
    again = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(vocab))
    assert again.update == 2
    again.step()
    after = policy_weights(tmp_path / "run" / "best")
    assert all(torch.equal(before[k], after[k]) for k in before)
    SCRIPT[:] = []
