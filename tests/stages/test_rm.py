"""Reward-model stage: learns a separable toy set (decoder and encoder backbones), per-group accuracy, margins, head
initialisation, and the normalisation folded into the saved model (mean 0 / std 1 on the reference completions,
pair accuracy unchanged)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _tiny import bert_rm, gpt2_lm, gpt2_rm, gpt2_tok, minilm_tok, toy_pairs, write_jsonl

from tether.algos.rm import (
    evaluate_pairs,
    load_reward_backbone,
    pair_scores,
    prepare_reward_model,
    score_completions,
    train_rm,
)
from tether.config.base import build, dump, help_lines
from tether.config.rm import RMConfig
from tether.data.preferences import collate_pairs, tokenize_pairs
from tether.errors import ConfigError, DataError
from tether.models.load import load_sequence_classifier, load_tokenizer
from tether.models.scalar import reward_input_style, score_head


def _files(tmp_path, n_train=48, n_eval=24):
    train = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(n_train, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", toy_pairs(n_eval, seed=1, groups=("alice", "bob", "carol")))
    return train, held


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _check_saved_model(res, cfg, train, held, mode):
    """Reload the saved directory with the plain loader: scores of the reference completions (the chosen of the
    training pairs) have mean 0 (and std 1), and the held-out pair accuracy is the one measured before the fold."""
    out = res.output_dir
    model, tok = load_sequence_classifier(out), load_tokenizer(out)
    recs = _records(train)
    scores = score_completions(model, tok, [r["prompt"] for r in recs], [r["chosen"] for r in recs],
                               max_length=cfg.max_length).double()
    assert abs(float(scores.mean())) < 1e-5
    if mode == "shift_scale":
        assert abs(float(scores.std(unbiased=False)) - 1.0) < 1e-5
    pairs = tokenize_pairs(_records(held), tok, style=reward_input_style(model), max_length=cfg.max_length,
                           group_column="group")
    ev = evaluate_pairs(model, pairs, tok.pad_token_id)
    before = [m for m in res.metrics if "eval_accuracy" in m][-1]["eval_accuracy"]
    assert ev["accuracy"] == before == res.accuracy
    info = json.loads((out / "tether_rm.json").read_text())
    norm = info["normalization"]
    assert norm["n"] == len(recs) and norm["mode"] == mode and str(train) in norm["file"]
    assert abs(norm["mean_after"]) < 1e-5 and norm["std"] > 0 and norm == res.normalization
    assert yaml.safe_load((out / "tether_config.yaml").read_text()) == dump(cfg)
    return model, tok, norm


def test_decoder_rm_learns_separable_pairs_and_saves_a_centred_model(tmp_path):
    train, held = _files(tmp_path)
    tok = gpt2_tok()
    cfg = RMConfig(output_dir=str(tmp_path / "rm"), train_file=str(train), eval_file=str(held), lr=3e-3,
                   lr_schedule="constant", batch_size=8, num_epochs=2, log_every=4, init_head="always")
    model, tok = prepare_reward_model(cfg, gpt2_rm(len(tok) + 1, seed=0), tok)
    pairs = tokenize_pairs(_records(held), tok, style="decoder", max_length=64, group_column="group")
    batch = collate_pairs(pairs, tok.pad_token_id)
    # every chosen/rejected row holds exactly one EOS, right before its padding (ppo_details.md A4)
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n = int(mask.sum())
        assert ids[n - 1] == tok.eos_token_id and int((ids == tok.eos_token_id).sum()) == 1
    initial = evaluate_pairs(model, pairs, tok.pad_token_id)
    assert abs(initial["loss"] - math.log(2)) < 0.05  # head init N(0, 1/√(d+1)): BT loss ≈ ln 2 (C1)

    res = train_rm(cfg, model=model, tokenizer=tok, progress=False)
    assert res.steps == 12 and res.accuracy >= 0.95 and res.eval_loss < 0.1
    assert set(res.group_accuracy) == {"alice", "bob", "carol"} and min(res.group_accuracy.values()) >= 0.95
    _, _, norm = _check_saved_model(res, cfg, train, held, "shift")
    assert norm["folded_into"] == "transformer.ln_f.bias" and norm["scale"] == 1.0


def test_encoder_rm_tiny_bert_with_minilm_tokenizer_shift_scale(tmp_path):
    train, held = _files(tmp_path)
    cfg = RMConfig(output_dir=str(tmp_path / "rm"), train_file=str(train), eval_file=str(held), lr=3e-3,
                   lr_schedule="constant", batch_size=8, num_epochs=2, normalize="shift_scale", init_head="always")
    res = train_rm(cfg, model=bert_rm(seed=0), tokenizer=minilm_tok(), progress=False)
    assert res.accuracy >= 0.95 and min(res.group_accuracy.values()) >= 0.95
    model, tok, norm = _check_saved_model(res, cfg, train, held, "shift_scale")
    assert type(model).__name__ == "BertForSequenceClassification" and norm["folded_into"] == "head.bias"
    assert tok.eos_token_id is None and tok.pad_token == "[PAD]"  # no EOS, no pad token added to an encoder


def test_margin_enters_the_loss(tmp_path):
    rows = toy_pairs(8)
    for i, r in enumerate(rows):
        r["m"] = float(i % 3)
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    logged = {}
    for margin_column in (None, "m"):
        tok = gpt2_tok()
        cfg = RMConfig(output_dir=str(tmp_path / f"rm{margin_column}"), train_file=str(train), eval_fraction=0.0,
                       batch_size=8, max_steps=1, lr=1e-4, margin_column=margin_column, normalize="none")
        model, tok = prepare_reward_model(cfg, gpt2_rm(len(tok) + 1, seed=2), tok)
        chosen, rejected = pair_scores(model, tokenize_pairs(rows, tok, style="decoder", max_length=64),
                                       tok.pad_token_id)
        m = torch.tensor([r["m"] for r in rows]) if margin_column else 0.0
        expected = float(torch.nn.functional.softplus(rejected - chosen + m).mean())
        res = train_rm(cfg, model=model, tokenizer=tok, progress=False)
        logged[margin_column] = res.metrics[0]["loss"]
        assert abs(res.metrics[0]["loss"] - expected) < 1e-5 and res.normalization is None
    assert logged["m"] > logged[None] + 0.3


def test_head_initialisation(tmp_path):
    from transformers import BertConfig, BertModel

    tok = gpt2_tok()
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    lm = gpt2_lm(len(tok), hidden=64)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    model, fresh = load_reward_backbone(tmp_path / "lm")
    assert fresh and type(model).__name__ == "GPT2ForSequenceClassification"
    cfg = RMConfig(model=str(tmp_path / "lm"), train_file="unused.jsonl")
    model, tok2 = prepare_reward_model(cfg, None, None)
    w = score_head(model).weight
    assert 0.7 < float(w.detach().std()) * math.sqrt(65) < 1.3  # N(0, 1/√(d+1)), d = 64; HF's default 0.02 would fail
    assert tok2.pad_token_id != tok2.eos_token_id and model.config.pad_token_id == tok2.pad_token_id
    model.save_pretrained(tmp_path / "rm")  # a directory that is already a reward model keeps its head
    again, fresh = load_reward_backbone(tmp_path / "rm")
    assert not fresh and torch.equal(score_head(again).weight, w)

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
              ).save_pretrained(tmp_path / "enc")
    model, fresh = load_reward_backbone(tmp_path / "enc")
    assert fresh
    cfg = RMConfig(model=str(tmp_path / "enc"), train_file="unused.jsonl")
    model, _ = prepare_reward_model(cfg, None, minilm_tok())
    head = score_head(model)
    assert torch.equal(head.bias, torch.zeros(1)) and 0.6 < float(head.weight.detach().std()) * math.sqrt(33) < 1.4


def test_bad_pair_files_and_explicit_group_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = toy_pairs(4)
    del rows[1]["rejected"]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = RMConfig(output_dir="rm", train_file="pairs.jsonl")
    with pytest.raises(DataError) as info:
        train_rm(cfg, model=gpt2_rm(50258), tokenizer=gpt2_tok(), progress=False)
    assert str(info.value) == "pairs.jsonl line 2: missing column 'rejected'"
    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
    cfg = RMConfig(output_dir="rm", train_file="pairs.jsonl", group_column="rater")
    with pytest.raises(DataError) as info:
        train_rm(cfg, model=gpt2_rm(50258), tokenizer=gpt2_tok(), progress=False)
    assert str(info.value) == "pairs.jsonl line 1: missing column 'rater'"


@pytest.mark.parametrize("data, message", [
    ({"train_file": "t.jsonl", "normalize": "zscore"},
     "normalize: Input should be 'none', 'shift' or 'shift_scale'"),
    ({"train_file": "t.jsonl", "normalize": "none", "normalize_file": "ref.jsonl"},
     "normalize_file is set but normalize is 'none'"),
    ({"train_file": "t.jsonl", "batch_size": 0}, "batch_size: Input should be greater than or equal to 1 (got 0)"),
    ({"train_file": "t.jsonl", "eval_fraction": 1.0}, "eval_fraction: Input should be less than 1 (got 1.0)"),
    ({"train_file": "t.jsonl", "margin_column": "group"}, "margin_column and group_column name the same column"),
    ({"train_file": "t.jsonl", "init_head": "zero"}, "init_head: Input should be 'auto', 'always' or 'never'"),
])
def test_rm_config_errors_are_one_line(data, message):
    with pytest.raises(ConfigError) as info:
        build(RMConfig, data)
    assert str(info.value).startswith(message), str(info.value)


def test_every_rm_field_is_documented():
    for name, field in RMConfig.model_fields.items():
        assert field.description and len(field.description) > 20, name
    assert len(help_lines(RMConfig)) == len(RMConfig.model_fields)
