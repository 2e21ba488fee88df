"""SFT and reward-model options through train_sft / train_rm: `dtype: bfloat16` is mixed precision with float32 master
weights (updates are not rounded away; the result tracks a float32 run), and `completion_only_loss` decides which
tokens are targets."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import gpt2_tok, llama_lm, toy_pairs, toy_sft, write_jsonl

from tether.algos.rm import train_rm
from tether.algos.sft import train_sft
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig
from tether.data.sft import tokenize_sft_records
from tether.models.load import load_causal_lm


def _model_dir(tmp_path, seed=0):
    tok = gpt2_tok()
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    d = tmp_path / "init"
    llama_lm(len(tok), seed=seed).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _flat(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def _compare(init, runs, norm_key):
    """Updates of the bf16 run against the float32 run from the same start."""
    d32 = {k: runs["float32"][k] - init[k] for k in init}
    d16 = {k: runs["bfloat16"][k] - init[k] for k in init}
    norms = [k for k in init if norm_key in k]
    assert norms
    for k in norms:  # norm gains sit at 1.0, where bf16's spacing (2⁻⁷) is far larger than an lr step
        assert float(d16[k].abs().min()) > 1e-5, f"{k} did not move under bf16"
    flat32 = torch.cat([d32[k].flatten() for k in init])
    flat16 = torch.cat([d16[k].flatten() for k in init])
    moved32 = flat32 != 0  # (embedding rows of unseen tokens get no gradient in either run)
    changed = float((flat16[moved32] != 0).float().mean())
    assert changed > 0.95, f"only {changed:.0%} of the weights the float32 run moved moved under bf16"
    rel = float((flat16 - flat32).norm() / flat32.norm())
    assert rel < 0.15, f"bf16 updates differ from float32 ones by {rel:.2f} (relative)"


def test_sft_bfloat16_keeps_float32_master_weights(tmp_path):
    """SFTConfig.dtype=bfloat16: the forwards run under bf16 autocast but the weights and AdamW state stay float32, so
    the norm gains move and the whole update tracks the float32 run within bf16 rounding (pure bf16 AdamW left 70%
    of the weights and every norm gain unchanged after 3 steps). The saved model is float32."""
    d = _model_dir(tmp_path)
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(24))
    init = _flat(load_causal_lm(d))
    runs, seen = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = SFTConfig(model=str(d), output_dir=str(tmp_path / dtype), train_file=str(train), eval_fraction=0.0,
                        lr=1e-3, lr_schedule="constant", batch_size=8, max_steps=3, dtype=dtype)
        import tether.algos.sft as sft_mod

        real = sft_mod.lm_logits
        sft_mod.lm_logits = lambda model, batch, _d=dtype: (seen.setdefault(_d, set()).add(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None), real(model, batch))[1]
        try:
            res = train_sft(cfg, progress=False)
        finally:
            sft_mod.lm_logits = real
        saved = load_causal_lm(res.output_dir)
        assert {p.dtype for p in saved.parameters()} == {torch.float32}
        runs[dtype] = _flat(saved)
    assert seen == {"float32": {None}, "bfloat16": {torch.bfloat16}}
    _compare(init, runs, "norm")


def test_rm_bfloat16_keeps_float32_master_weights(tmp_path):
    """RMConfig.dtype=bfloat16 (a decoder reward model started from a causal LM): the same mixed precision; the norm
    gains move and the update tracks the float32 run."""
    d = _model_dir(tmp_path)
    train = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(32))
    runs = {}
    from tether.algos.rm import load_reward_backbone

    model, _ = load_reward_backbone(d)
    torch.manual_seed(0)
    init = None
    for dtype in ("float32", "bfloat16"):
        cfg = RMConfig(model=str(d), output_dir=str(tmp_path / dtype), train_file=str(train), eval_fraction=0.0,
                       lr=1e-3, lr_schedule="constant", batch_size=8, max_steps=3, dtype=dtype, normalize="none",
                       init_head="always", seed=0)
        res = train_rm(cfg, progress=False)
        from tether.models.load import load_sequence_classifier

        saved = load_sequence_classifier(res.output_dir)
        assert {p.dtype for p in saved.parameters()} == {torch.float32}
        runs[dtype] = {k: v for k, v in _flat(saved).items() if not k.startswith("score")}
    init = {k: v for k, v in _flat(model).items() if not k.startswith("score")}
    _compare(init, runs, "norm")


@pytest.mark.parametrize("completion_only", [True, False])
def test_completion_only_loss_decides_the_targets(tmp_path, completion_only):
    """SFTConfig.completion_only_loss: the step's target count (`tokens` in metrics.jsonl) is the completion tokens
    (prompt masked) or every token but the first of each example; the whole-sequence loss is therefore computed over
    more tokens and differs."""
    d = _model_dir(tmp_path)
    records = toy_sft(6)
    train = write_jsonl(tmp_path / "train.jsonl", records)
    cfg = SFTConfig(model=str(d), output_dir=str(tmp_path / "out"), train_file=str(train), eval_fraction=0.0,
                    batch_size=6, max_steps=1, log_every=1, completion_only_loss=completion_only)
    res = train_sft(cfg, progress=False)
    tok = gpt2_tok()
    exs, _ = tokenize_sft_records(records, tok, completion_only=completion_only)
    completion_targets = sum(sum(ex["completion_mask"][1:]) for ex in exs)
    all_targets = sum(len(ex["input_ids"]) - 1 for ex in exs)
    first = [m for m in res.metrics if "tokens" in m][0]
    assert first["tokens"] == (completion_targets if completion_only else all_targets)
    assert all_targets > completion_targets
    logged = json.loads((res.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["tokens"] == first["tokens"]
