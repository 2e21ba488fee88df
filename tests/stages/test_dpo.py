"""DPO / IPO stage: the step-0 oracle (policy = reference: loss ln 2 or IPO's 1/(4β²), margin 0), learning a
separable toy set (loss falls, reward accuracy rises, best/ and final/ saved with a card), precomputed reference
log-probs train as the live reference does, the options' observable effects, and the pair encoding (SFT's: BOS once,
completion tokens only, the reward model's truncation rule)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _tiny import gpt2_lm, gpt2_tok, toy_pairs, write_jsonl

from tether.algos.dpo import pair_logps, sequence_logps, train_dpo
from tether.algos.sft import prepare_causal_lm
from tether.config.base import dump
from tether.config.dpo import DPOConfig
from tether.data.dpo import collate_dpo, encode_pair_side, tokenize_dpo_pairs
from tether.data.sft import tokenize_sft
from tether.models.load import load_causal_lm, load_tokenizer


def _files(tmp_path, n_train=32, n_eval=16):
    train = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(n_train, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", toy_pairs(n_eval, seed=1))
    return train, held


def _model(seed=0):
    tok = gpt2_tok()
    return gpt2_lm(len(tok) + 1, seed=seed), tok


def _run(tmp_path, name, **kw):
    train, held = _files(tmp_path)
    opts = dict(output_dir=str(tmp_path / name), train_file=str(train), eval_file=str(held), batch_size=4,
                log_every=1, max_length=32, lr=1e-3, lr_schedule="constant", checkpoint_every=0)
    opts |= kw
    cfg = DPOConfig(**opts)
    model, tok = _model()
    return cfg, train_dpo(cfg, model=model, tokenizer=tok, progress=False)


def _steps(res):
    return [m for m in res.metrics if "loss" in m]


# ------------------------------------------------------------------------------------------------ the oracle


@pytest.mark.parametrize("loss_type,beta,expect", [("sigmoid", 0.1, math.log(2)), ("sigmoid", 0.7, math.log(2)),
                                                   ("ipo", 0.1, 25.0), ("ipo", 0.5, 1.0)])
@pytest.mark.parametrize("precompute", [False, True])
def test_step_zero_policy_is_reference(tmp_path, loss_type, beta, expect, precompute):
    """The first step's loss is computed before its optimizer step, with policy = reference: h = 0 exactly, so the
    DPO loss is ln 2 and IPO's (0 − 1/(2β))² = 1/(4β²); implicit rewards, margin and log-ratio are 0; no pair is
    ranked right (a tie is wrong)."""
    _, res = _run(tmp_path, "run", max_steps=2, loss_type=loss_type, beta=beta, precompute_ref_logprobs=precompute)
    first = _steps(res)[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(expect, rel=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "logratio/mean", "rewards/accuracy"):
        assert abs(first[key]) < 1e-6, key
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def test_learns_separable_pairs_and_saves_final_and_best(tmp_path):
    cfg, res = _run(tmp_path, "run", num_epochs=4, eval_every=4, beta=0.5)
    steps = _steps(res)
    assert len(steps) == 4 * 8 and res.steps == 32
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    late = sum(s["loss"] for s in steps[-8:]) / 8
    assert late < 0.5 * math.log(2), late
    assert sum(s["rewards/accuracy"] for s in steps[-8:]) / 8 > 0.9
    evals = [m for m in res.metrics if "eval/loss" in m]
    assert [m["step"] for m in evals] == [4, 8, 12, 16, 20, 24, 28, 32]  # every eval_every steps and at the end
    assert evals[-1]["eval/rewards/accuracy"] > 0.9 and evals[-1]["eval/rewards/margin"] > 0
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert res.eval_loss == evals[-1]["eval/loss"] and res.eval_accuracy == evals[-1]["eval/rewards/accuracy"]
    # the implicit reward is β × the log-ratio: margin = chosen − rejected reward
    for m in steps:
        assert m["rewards/margin"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-6)
    out = tmp_path / "run"
    assert res.output_dir == out / "final" and res.best_dir == out / "best"
    for d in ("final", "best"):
        assert yaml.safe_load((out / d / "tether_config.yaml").read_text()) == dump(cfg)
        card = (out / d / "README.md").read_text()
        assert "direct preference optimisation" in card and "- dpo" in card
    assert (out / "report.html").is_file() and (out / "metrics.jsonl").is_file()
    # best/ holds the policy of the lowest held-out loss: re-scoring it gives that loss
    best_step = min(evals, key=lambda m: m["eval/loss"])
    tok = load_tokenizer(out / "best")
    best = load_causal_lm(out / "best")
    ref, _ = _model()
    ref, _ = prepare_causal_lm(cfg, ref, gpt2_tok())
    ex, _ = tokenize_dpo_pairs([json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()], tok,
                               max_length=32)
    pc, pr = pair_logps(best, ex, tok.pad_token_id)
    rc, rr = pair_logps(ref, ex, tok.pad_token_id)
    loss = float(-torch.nn.functional.logsigmoid(0.5 * ((pc - rc) - (pr - rr))).mean())
    assert loss == pytest.approx(best_step["eval/loss"], abs=1e-4)
    # the finished run is returned as it is
    again = train_dpo(cfg, progress=False)
    assert again.steps == 32 and again.eval_loss == res.eval_loss


def test_precomputed_reference_trains_as_the_live_reference(tmp_path):
    _, live = _run(tmp_path, "live", max_steps=6, eval_every=3)
    _, pre = _run(tmp_path, "pre", max_steps=6, eval_every=3, precompute_ref_logprobs=True)
    assert (tmp_path / "pre" / "reference_logps.safetensors").is_file()
    assert not (tmp_path / "live" / "reference_logps.safetensors").exists()
    a, b = live.metrics, pre.metrics
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k, v in x.items():
            if isinstance(v, float) and not k.startswith("time/"):
                assert y[k] == pytest.approx(v, abs=1e-6), k
    wa = load_causal_lm(tmp_path / "live" / "final").state_dict()
    wb = load_causal_lm(tmp_path / "pre" / "final").state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_precomputed_file_holds_the_starting_models_scores(tmp_path):
    cfg, _ = _run(tmp_path, "pre", max_steps=2, precompute_ref_logprobs=True)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "pre" / "reference_logps.safetensors"))
    model, tok = prepare_causal_lm(cfg, *_model())
    records = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    ex, _ = tokenize_dpo_pairs(records, tok, max_length=32)
    pc, pr = pair_logps(model, ex, tok.pad_token_id)
    assert torch.allclose(saved["train_chosen"], pc, atol=1e-5) and torch.allclose(saved["train_rejected"], pr,
                                                                                     atol=1e-5)
    assert saved["eval_chosen"].shape == (16,)


# ------------------------------------------------------------------------------------------------ options


def test_label_smoothing_caps_the_margin(tmp_path):
    """Conservative DPO's loss is minimal at σ(β·h) = 1 − ε: the margin levels off where plain DPO's keeps growing,
    and the loss reported is the smoothed one (−(1−ε)·log σ − ε·log σ(−·) of the same margins)."""
    _, plain = _run(tmp_path, "plain", num_epochs=4, beta=0.5)
    _, smooth = _run(tmp_path, "smooth", num_epochs=4, beta=0.5, label_smoothing=0.4)
    m_plain = sum(s["rewards/margin"] for s in _steps(plain)[-8:]) / 8
    m_smooth = sum(s["rewards/margin"] for s in _steps(smooth)[-8:]) / 8
    assert m_smooth < m_plain and m_smooth < 2 * math.log(0.6 / 0.4)
    assert _steps(smooth)[-1]["loss"] > _steps(plain)[-1]["loss"]


def test_no_eval_split_means_no_best(tmp_path):
    train, _ = _files(tmp_path)
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), train_file=str(train), eval_fraction=0.0, max_steps=2,
                    max_length=32, checkpoint_every=0)
    res = train_dpo(cfg, model=_model()[0], tokenizer=gpt2_tok(), progress=False)
    assert res.best_dir is None and res.eval_loss is None and not (tmp_path / "run" / "best").exists()
    assert not any("eval/loss" in m for m in res.metrics)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_eval_fraction_holds_out_pairs(tmp_path):
    train, _ = _files(tmp_path)
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), train_file=str(train), eval_fraction=0.25, batch_size=4,
                    max_length=32, checkpoint_every=0, log_every=1)
    res = train_dpo(cfg, model=_model()[0], tokenizer=gpt2_tok(), progress=False)
    assert res.steps == 6  # 24 of the 32 pairs train, 4 per step
    assert res.eval_loss is not None


def test_bfloat16_autocast_keeps_the_oracle(tmp_path):
    _, res = _run(tmp_path, "run", max_steps=2, dtype="bfloat16")
    first = _steps(res)[0]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6) and abs(first["rewards/margin"]) < 1e-6
    assert all(math.isfinite(s["loss"]) for s in _steps(res))


def test_max_length_truncates_and_is_logged(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _run(tmp_path, "run", max_steps=1, max_length=8)
    assert any("were truncated" in r.getMessage() and "max_length=8" in r.getMessage() for r in caplog.records)


def test_grad_accum_equals_the_larger_batch(tmp_path):
    """The loss of a step is the mean over all its pairs: 2 micro-batches of 2 step as 1 of 4 does (to float
    rounding, which AdamW's first normalised steps magnify on near-zero gradients: 1 % of the movement)."""
    _, one = _run(tmp_path, "one", max_steps=3, batch_size=4)
    _, two = _run(tmp_path, "two", max_steps=3, batch_size=2, grad_accum=2)
    for a, b in zip(_steps(one), _steps(two)):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["rewards/margin"] == pytest.approx(
            a["rewards/margin"], abs=1e-5)
    init = _model()[0].state_dict()
    wa = load_causal_lm(tmp_path / "one" / "final").state_dict()
    wb = load_causal_lm(tmp_path / "two" / "final").state_dict()
    moved = max(float((wa[k] - init[k]).abs().max()) for k in init if k in wa and wa[k].shape == init[k].shape)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 0.01 * moved


def test_chat_and_implicit_prompt_pairs(tmp_path):
    """Chat pairs train (a template-less tokenizer gets the fallback template, saved with the policy), and
    implicit-prompt pairs (chosen/rejected alone) encode as the explicit prompt/chosen/rejected pairs do."""
    chat = [{"prompt": [{"role": "user", "content": f"Review the {r['prompt'].split()[-1][:-1]}"}],
             "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]} for r in toy_pairs(16)]
    train = write_jsonl(tmp_path / "chat.jsonl", chat)
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), train_file=str(train), eval_fraction=0.25, max_steps=2,
                    max_length=48, checkpoint_every=0, log_every=1)
    res = train_dpo(cfg, model=_model()[0], tokenizer=gpt2_tok(), progress=False)
    assert _steps(res)[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert load_tokenizer(tmp_path / "run" / "final").chat_template
    from tether.data.readers import read_records

    explicit = toy_pairs(4)
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in explicit]
    tok = gpt2_tok()
    a, _ = tokenize_dpo_pairs(read_records(explicit, "preference"), tok, max_length=64)
    b, _ = tokenize_dpo_pairs(read_records(implicit, "preference"), tok, max_length=64)
    for x, y in zip(a, b):
        assert x["chosen_ids"] == y["chosen_ids"] and x["rejected_ids"] == y["rejected_ids"]


def test_readme_dpo_block_runs(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "train_dpo(" in b)
    monkeypatch.chdir(tmp_path)
    model, tok = _model()
    model.save_pretrained(tmp_path / "runs" / "sft")
    tok.save_pretrained(tmp_path / "runs" / "sft")
    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(24))
    exec(compile(block, "README.md", "exec"), {})
    loss, accuracy = (float(x) for x in capsys.readouterr().out.split())
    assert math.isfinite(loss) and 0.0 <= accuracy <= 1.0
    out = tmp_path / "runs" / "readme-dpo"
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()
    assert (out / "reference_logps.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ encoding


def test_each_side_is_the_sft_encoding_with_completion_tokens_marked(bos_tok):
    """With a BOS-adding tokenizer the BOS comes once, the ids are SFT's for the same prompt/completion, and only
    the completion (with its EOS) is scored."""
    ids, mask, cut = encode_pair_side(bos_tok, "Review of the movie:", " A great movie.", max_length=64)
    sft = tokenize_sft({"prompt": "Review of the movie:", "completion": " A great movie."}, bos_tok)
    assert ids == sft["input_ids"] and mask == sft["completion_mask"] and not cut
    assert ids[0] == bos_tok.bos_token_id and ids.count(bos_tok.bos_token_id) == 1
    assert ids[-1] == bos_tok.eos_token_id and mask[-1] == 1
    n_comp = len(bos_tok(" A great movie.", add_special_tokens=False)["input_ids"]) + 1
    assert sum(mask) == n_comp and mask[-n_comp:] == [1] * n_comp


def test_truncation_keeps_the_bos_and_drops_old_prompt_tokens_first(bos_tok):
    prompt = " ".join(f"w{i}" for i in range(30))
    full, fmask, _ = encode_pair_side(bos_tok, prompt, " fine.", max_length=512)
    ids, mask, cut = encode_pair_side(bos_tok, prompt, " fine.", max_length=12)
    assert cut and len(ids) == 12 and ids[0] == bos_tok.bos_token_id
    n_comp = sum(fmask)
    assert ids[-n_comp:] == full[-n_comp:] and sum(mask) == n_comp  # the completion is whole
    assert ids[1:-n_comp] == full[len(full) - (12 - 1) : -n_comp]  # the newest prompt tokens stay
    ids, mask, cut = encode_pair_side(bos_tok, prompt, " fine.", max_length=512, max_prompt_length=5)
    assert cut and len(ids) - sum(mask) == 5 and ids[0] == bos_tok.bos_token_id


def test_sequence_logps_sum_completion_tokens_only():
    tok = gpt2_tok()
    model = gpt2_lm(len(tok) + 1)
    ex, _ = tokenize_dpo_pairs(toy_pairs(3), tok, max_length=32)
    b = collate_dpo(ex, pad_token_id=len(tok))
    with torch.no_grad():
        got = sequence_logps(model, b)
    assert got.shape == (6,)
    for row in range(6):  # float64 oracle on each row alone, no padding
        n = int(b["attention_mask"][row].sum())
        ids = b["input_ids"][row, :n]
        with torch.no_grad():
            lp = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
        want = sum(float(lp[t - 1, ids[t]]) for t in range(1, n) if b["completion_mask"][row, t])
        assert float(got[row]) == pytest.approx(want, abs=1e-4)


# ------------------------------------------------------------------------------------------------ LoRA


def _lora_run(tmp_path, name="run", **kw):
    """DPO of a tiny GPT-2 saved to disk (so the adapter records its base) with a LoRA adapter."""
    train, held = _files(tmp_path)
    model, tok = _model()
    base = tmp_path / "base"
    if not base.is_dir():
        model.save_pretrained(base)
        tok.save_pretrained(base)
    opts = dict(model=str(base), output_dir=str(tmp_path / name), train_file=str(train), eval_file=str(held),
                batch_size=4, log_every=1, max_length=32, lr=1e-2, lr_schedule="constant", checkpoint_every=0,
                policy_lora={"r": 4, "alpha": 8})
    opts |= kw
    cfg = DPOConfig(**opts)
    return cfg, train_dpo(cfg, progress=False), base


def _pair_logits(model, tok):
    enc = tok(["the film was good", "the film was bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


@pytest.mark.parametrize("precompute", [False, True])
def test_lora_policy_against_its_adapter_off_reference(tmp_path, precompute):
    """policy_lora: step 0 is the oracle (the adapter starts as the identity, so the policy is the reference: loss ln
    2, margin 0), the adapter learns the toy pairs, final/ holds only the adapter, and with the adapter off the model
    is still exactly the base (the reference never moved)."""
    from tether.models.lora import adapter_disabled, is_adapter_run, load_adapter_run

    cfg, res, base_dir = _lora_run(tmp_path, num_epochs=3, beta=0.5, precompute_ref_logprobs=precompute)
    steps = _steps(res)
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert abs(steps[0]["rewards/margin"]) < 1e-6
    assert sum(s["loss"] for s in steps[-8:]) / 8 < 0.8 * math.log(2)
    final = res.output_dir
    assert is_adapter_run(final) and not (final / "model.safetensors").exists()
    assert (final / "tether_config.yaml").is_file() and (final / "README.md").is_file()
    wrapped, tok = load_adapter_run(final)
    base = load_causal_lm(base_dir)
    tok.padding_side = "left"
    with adapter_disabled(wrapped):
        off = _pair_logits(wrapped.get_base_model(), tok)
    assert torch.equal(off, _pair_logits(base, tok))
    on = _pair_logits(wrapped.get_base_model(), tok)
    assert not torch.allclose(on, off, atol=1e-4)
    from tether.algos.parts import load_policy  # what tether eval and tether compare load a run with

    loaded, _ = load_policy(str(final), pad_policy="add", progress=False)
    assert torch.equal(_pair_logits(loaded, tok), on)


def test_lora_merge_on_save_writes_a_plain_model(tmp_path):
    from tether.models.lora import MERGED_DIR, load_adapter_run

    _, res, _ = _lora_run(tmp_path, max_steps=4, policy_lora={"r": 4, "alpha": 8, "merge_on_save": True})
    merged = load_causal_lm(res.output_dir / MERGED_DIR)
    wrapped, tok = load_adapter_run(res.output_dir)
    tok.padding_side = "left"
    torch.testing.assert_close(_pair_logits(merged, tok),
                               _pair_logits(wrapped.get_base_model(), tok), atol=1e-5, rtol=1e-5)


def test_lora_on_a_model_that_carries_an_adapter_is_one_line(tmp_path):
    from tether.config.lora import LoraConfig
    from tether.errors import ModelError
    from tether.models.lora import wrap_lora

    train, held = _files(tmp_path)
    model, tok = _model()
    wrap_lora(model, LoraConfig(r=4))
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), train_file=str(train), eval_file=str(held), batch_size=4,
                    max_length=32, policy_lora={"r": 4})
    with pytest.raises(ModelError, match="already carries a peft adapter"):
        train_dpo(cfg, model=model, tokenizer=tok, progress=False)
