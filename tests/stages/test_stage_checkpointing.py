"""`gradient_checkpointing: true` through train_sft / train_rm: the trunk keeps far fewer activations for the backward
and the first step's gradients equal those without it (1e-6)."""

from __future__ import annotations

import pytest
import torch
from _tiny import gpt2_tok, llama_lm, toy_pairs, toy_sft, write_jsonl

import tether.algos.rm as rm_mod
import tether.algos.sft as sft_mod
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig


def _model_dir(tmp_path):
    tok = gpt2_tok()
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    d = tmp_path / "init"
    llama_lm(len(tok), seed=0, hidden=64, layers=4).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _measure(monkeypatch, module, forward_name: str, run):
    """Run ``run()`` with ``module.<forward_name>`` (the stage's training forward) counting, on its first call, the
    distinct non-parameter storages autograd keeps inside the model's trunk, and ``module.offline_step`` copying the
    gradients of the first optimizer step. Returns (bytes, gradients)."""
    real_forward, real_step = getattr(module, forward_name), module.offline_step
    held: dict[int, int] = {}
    grads: dict[str, torch.Tensor] = {}

    def forward(model, *a, **k):
        if held:
            return real_forward(model, *a, **k)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        trunk = model.base_model
        handles = [trunk.register_forward_pre_hook(lambda *x: hooks.__enter__()),
                   trunk.register_forward_hook(lambda *x: hooks.__exit__(None, None, None))]
        try:
            return real_forward(model, *a, **k)
        finally:
            for h in handles:
                h.remove()

    def step(r, finite):
        if not grads:
            grads.update({str(i): p.grad.detach().clone() for i, p in enumerate(r.params) if p.grad is not None})
        return real_step(r, finite)

    monkeypatch.setattr(module, forward_name, forward)
    monkeypatch.setattr(module, "offline_step", step)
    try:
        run()
    finally:
        monkeypatch.undo()
    return sum(held.values()), grads


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_gradient_checkpointing_in_sft_and_rm(tmp_path, monkeypatch, stage):
    d = _model_dir(tmp_path)
    runs = {}
    for ckpt in (False, True):
        out = str(tmp_path / f"{stage}-{ckpt}")
        if stage == "sft":
            train = write_jsonl(tmp_path / "train.jsonl", toy_sft(8))
            cfg = SFTConfig(model=str(d), output_dir=out, train_file=str(train), eval_fraction=0.0, batch_size=4,
                            max_steps=1, gradient_checkpointing=ckpt)
            runs[ckpt] = _measure(monkeypatch, sft_mod, "lm_logits", lambda: sft_mod.train_sft(cfg, progress=False))
        else:
            train = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(8))
            cfg = RMConfig(model=str(d), output_dir=out, train_file=str(train), eval_fraction=0.0, batch_size=4,
                           max_steps=1, normalize="none", init_head="always", seed=0, gradient_checkpointing=ckpt)
            runs[ckpt] = _measure(monkeypatch, rm_mod, "sequence_scores", lambda: rm_mod.train_rm(cfg, progress=False))
    (full, g_full), (ckpt, g_ckpt) = runs[False], runs[True]
    assert 0 < ckpt < 0.5 * full, (ckpt, full)
    assert g_full and g_full.keys() == g_ckpt.keys()
    for name, g in g_full.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-6, atol=1e-6, msg=name)
