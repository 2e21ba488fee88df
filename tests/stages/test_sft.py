"""SFT stage: tokenisation (prompt masked, one EOS), the masked loss against a hand computation, pad and packing
invariance, accumulation invariance, a loss that falls on a tiny model, the saved model; plus the shared helpers
(schedules, metrics writer, atomic save) and config validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _tiny import gpt2_lm, gpt2_tok, llama_lm, toy_sft, write_jsonl

from tether.algos.common import split_eval
from tether.engine.optim import build_optimizer, build_scheduler, lr_factor
from tether.engine.outputs import MetricsWriter, save_model_atomic
from tether.algos.sft import evaluate_sft, lm_logits, prepare_causal_lm, sft_loss, train_sft
from tether.config.base import build, dump, help_lines
from tether.config.sft import SFTConfig
from tether.data.sft import collate_sft, pack_sft, tokenize_sft, tokenize_sft_records
from tether.errors import ConfigError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "{% if m['role'] == 'assistant' %}<|endoftext|>{% else %}<|im_end|>{% endif %}\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao."}]


def _tok_pad():
    tok = gpt2_tok()
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


# --------------------------------------------------------------------------------------------- tokenisation


def test_prompt_tokens_are_masked_and_one_eos_ends_the_completion():
    tok = gpt2_tok()
    eos = tok.eos_token_id
    ex = tokenize_sft({"prompt": "Tell me a joke.", "completion": " Knock knock."}, tok)
    p, c = tok("Tell me a joke.")["input_ids"], tok(" Knock knock.")["input_ids"]
    assert ex["input_ids"] == p + c + [eos]
    assert ex["completion_mask"] == [0] * len(p) + [1] * (len(c) + 1)
    # a completion that already ends with EOS (once or twice) still gets exactly one
    for tail in ("<|endoftext|>", "<|endoftext|><|endoftext|>"):
        again = tokenize_sft({"prompt": "Tell me a joke.", "completion": " Knock knock." + tail}, tok)
        assert again["input_ids"] == ex["input_ids"]
    text = tokenize_sft({"text": "Just text."}, tok)
    assert text["input_ids"] == tok("Just text.")["input_ids"] + [eos] and all(text["completion_mask"])
    cut = tokenize_sft({"prompt": "Tell me a joke.", "completion": " Knock knock."}, tok, max_length=6)
    assert cut["truncated"] and cut["input_ids"] == (p + c)[:6]


@pytest.mark.parametrize("template", [None, CHATML], ids=["fallback", "template"])
def test_chat_targets_are_the_assistant_turns_up_to_their_eos(template):
    tok = gpt2_tok()
    tok.chat_template = template
    ex = tokenize_sft({"messages": CONV}, tok)
    targets = [t for t, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
    space = " " if template is None else ""  # the fallback writes "Assistant: <content>"
    eos = [tok.eos_token_id]
    want = tok(f"{space}Hello!")["input_ids"] + eos + tok(f"{space}Ciao.")["input_ids"] + eos
    assert targets == want
    assert ex["input_ids"][-1] == tok.eos_token_id  # the trailing newline after the last turn is not kept
    # the prompt part is exactly what load_prompts would give the policy at generation time
    from tether.data.readers import render_chat

    head = render_chat(CONV[:2], tok, add_generation_prompt=True)
    first_target = ex["completion_mask"].index(1)
    assert tok.decode(ex["input_ids"][:first_target]) == head


# --------------------------------------------------------------------------------------------- loss


def _batch_and_logits(model, tok, completion_only=True, pad_to=None):
    recs = [{"prompt": "Tell me about the cat.", "completion": " It sleeps."},
            {"prompt": "Hi", "completion": " Hello there, friend."},
            {"text": "Plain text line."}]
    exs = [tokenize_sft(r, tok) for r in recs]
    batch = collate_sft(exs, tok.pad_token_id, completion_only=completion_only, pad_to=pad_to)
    with torch.no_grad():
        logits = lm_logits(model, batch)
    return exs, batch, logits


def _hand_loss(logits, exs, completion_only):
    """Mean over target tokens t ≥ 1 of −log softmax(logits[t−1])[id_t], with plain loops in float64."""
    total, n = 0.0, 0
    for b, ex in enumerate(exs):
        for t in range(1, len(ex["input_ids"])):
            if completion_only and not ex["completion_mask"][t]:
                continue
            logp = torch.log_softmax(logits[b, t - 1].double(), -1)[ex["input_ids"][t]]
            total -= float(logp)
            n += 1
    return total / n, n


@pytest.mark.parametrize("completion_only", [True, False])
def test_loss_equals_hand_mean_and_ignores_non_target_labels(completion_only):
    tok = _tok_pad()
    model = gpt2_lm(len(tok), seed=3).eval()
    exs, batch, logits = _batch_and_logits(model, tok, completion_only)
    loss = sft_loss(logits, batch["labels"], batch["loss_mask"])
    want, n = _hand_loss(logits, exs, completion_only)
    assert int(batch["loss_mask"][:, 1:].sum()) == n
    assert abs(float(loss) - want) < 1e-5
    # scramble the labels of every prompt token (and pad): the loss must not move when they are not targets
    prompt = (batch["attention_mask"].bool() & ~batch["loss_mask"])
    prompt_real = torch.zeros_like(prompt)
    for b, ex in enumerate(exs):
        prompt_real[b, : len(ex["input_ids"])] = torch.tensor([not m for m in ex["completion_mask"]])
    scrambled = batch["labels"].clone()
    scrambled[~batch["loss_mask"]] = torch.randint(0, len(tok), (int((~batch["loss_mask"]).sum()),))
    changed = sft_loss(logits, scrambled, batch["loss_mask"])
    assert float(changed) == float(loss)
    if not completion_only:  # negative control: here the prompt tokens ARE targets, so their labels count
        scrambled2 = batch["labels"].clone()
        scrambled2[:, 1:][prompt_real[:, 1:]] = (scrambled2[:, 1:][prompt_real[:, 1:]] + 1) % len(tok)
        assert abs(float(sft_loss(logits, scrambled2, batch["loss_mask"])) - float(loss)) > 1e-3
    else:
        assert prompt_real[:, 1:].any()  # there were prompt tokens to scramble


@pytest.mark.parametrize("make", [gpt2_lm, llama_lm], ids=["gpt2", "llama"])
def test_appending_pads_leaves_the_loss_unchanged(make):
    tok = _tok_pad()
    model = make(len(tok), seed=4).eval()
    _, batch, logits = _batch_and_logits(model, tok)
    _, padded, logits_p = _batch_and_logits(model, tok, pad_to=batch["input_ids"].shape[1] + 9)
    assert padded["input_ids"].shape[1] == batch["input_ids"].shape[1] + 9
    a = sft_loss(logits, batch["labels"], batch["loss_mask"])
    b = sft_loss(logits_p, padded["labels"], padded["loss_mask"])
    assert abs(float(a) - float(b)) < 1e-6


@pytest.mark.parametrize("make", [gpt2_lm, llama_lm], ids=["gpt2", "llama"])
def test_packed_loss_equals_unpacked_loss(make):
    tok = _tok_pad()
    model = make(len(tok), seed=5).eval()
    exs, _ = tokenize_sft_records(toy_sft(7) + [{"text": "Some plain text here."}], tok, completion_only=False)
    rows = pack_sft(exs, max_length=40)
    assert len(rows) < len(exs) and all(len(r["input_ids"]) <= 40 for r in rows)
    assert sorted(len(e["input_ids"]) for e in exs) == sorted(
        [b - a for r in rows for a, b in _spans(r["position_ids"])])
    for completion_only in (True, False):
        unpacked = evaluate_sft(model, exs, tok.pad_token_id, completion_only=completion_only, batch_size=3)
        batch = collate_sft(rows, tok.pad_token_id, completion_only=completion_only)
        with torch.no_grad():
            packed = sft_loss(lm_logits(model, batch), batch["labels"], batch["loss_mask"])
        assert abs(float(packed) - unpacked) < 1e-5, completion_only


def _spans(pos):
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return list(zip(starts[:-1], starts[1:]))


# --------------------------------------------------------------------------------------------- training


def test_train_sft_loss_falls_and_the_saved_model_reloads(tmp_path):
    from tether.models.load import load_causal_lm, load_tokenizer

    tok = gpt2_tok()
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(32))
    held = write_jsonl(tmp_path / "eval.jsonl", toy_sft(8, seed=1))
    cfg = SFTConfig(output_dir=str(tmp_path / "out"), train_file=str(train), eval_file=str(held), lr=1e-2,
                    lr_schedule="constant", batch_size=8, num_epochs=3, log_every=2, eval_every=4)
    model, tok = prepare_causal_lm(cfg, gpt2_lm(len(tok) + 1, seed=0), tok)
    eval_ex, _ = tokenize_sft_records([json.loads(x) for x in held.read_text().splitlines()], tok)
    initial = evaluate_sft(model, eval_ex, tok.pad_token_id)
    res = train_sft(cfg, model=model, tokenizer=tok, progress=False)
    evals = [m["eval_loss"] for m in res.metrics if "eval_loss" in m]
    assert res.steps == 12 and len(evals) == 3 and res.eval_loss == evals[-1]
    assert initial > evals[0] > evals[1] > evals[2] and evals[2] < initial - 2.0, (initial, evals)
    # saved: safetensors + tokenizer with a distinct pad + the resolved config + the metrics log
    out = res.output_dir
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".out.*"))
    assert yaml.safe_load((out / "tether_config.yaml").read_text()) == dump(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == res.metrics
    loaded, ltok = load_causal_lm(out), load_tokenizer(out)
    assert ltok.pad_token_id is not None and ltok.pad_token_id != ltok.eos_token_id
    assert loaded.config.pad_token_id == ltok.pad_token_id
    assert abs(evaluate_sft(loaded, eval_ex, ltok.pad_token_id) - res.eval_loss) < 1e-5


def test_grad_accumulation_gives_the_same_update(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(6) + [{"prompt": "Q?", "completion": " A long answer here."}])
    params = []
    for bs, accum in ((4, 1), (1, 4)):
        tok = gpt2_tok()
        model = gpt2_lm(len(tok) + 1, seed=7).double()
        cfg = SFTConfig(output_dir=str(tmp_path / f"o{bs}"), train_file=str(train), eval_fraction=0.0, lr=1e-3,
                        batch_size=bs, grad_accum=accum, max_steps=1, max_grad_norm=None)
        train_sft(cfg, model=model, tokenizer=tok, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------- shared helpers


def test_lr_schedules():
    # linear, no warm-up: N+'s lr·(1 − (u−1)/U) for update u = step + 1 (ppo_details.md J2)
    U = 10
    assert [lr_factor(s, "linear", 0, U) for s in (0, U - 1)] == [1.0, 1 - (U - 1) / U]
    assert lr_factor(0, "cosine", 0, U) == 1.0 and abs(lr_factor(U, "cosine", 0, U)) < 1e-12
    assert abs(lr_factor(5, "cosine", 0, U) - 0.5) < 1e-12
    assert [lr_factor(s, "constant", 3, U) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert min(lr_factor(s, k, 2, U) for k in ("linear", "cosine") for s in range(U + 3)) >= 0.0
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # the bias is never decayed
    assert opt.defaults["eps"] == 1e-5
    sched = build_scheduler(opt, "linear", 0, 4)
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert [round(x, 10) for x in lrs] == [0.1, 0.075, 0.05, 0.025]
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(0, "step", 0, 4)


def test_metrics_writer_and_atomic_save(tmp_path):
    w = MetricsWriter(tmp_path / "m" / "metrics.jsonl")
    w.write({"step": 1, "loss": torch.tensor(0.5), "bad": float("nan")})
    w.write({"step": 2, "loss": 0.25})
    lines = (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 1, "loss": 0.5, "bad": None}, {"step": 2, "loss": 0.25}]
    assert MetricsWriter(tmp_path / "m" / "metrics.jsonl") and (tmp_path / "m" / "metrics.jsonl").read_text() == ""

    tok = _tok_pad()
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("old weights")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    save_model_atomic(gpt2_lm(len(tok)), tok, out, extra_files={"a.yaml": {"x": 1}, "b.json": {"y": [1, 2]},
                                                                  "c.txt": "hello"})
    assert not (out / "stale.bin").exists() and (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert yaml.safe_load((out / "a.yaml").read_text()) == {"x": 1}
    assert json.loads((out / "b.json").read_text()) == {"y": [1, 2]} and (out / "c.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "model"]  # no temporary directories left
    with pytest.raises(ValueError, match="outside"):
        save_model_atomic(gpt2_lm(len(tok)), tok, out, extra_files={"../evil.txt": "x"})
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m", "model"]


def test_split_eval_is_seeded_and_disjoint():
    recs = list(range(20))
    a, b = split_eval(recs, 0.25, seed=1)
    assert len(b) == 5 and sorted(a + b) == recs and split_eval(recs, 0.25, seed=1) == (a, b)
    assert split_eval(recs, 0.25, seed=2) != (a, b)
    assert split_eval(recs, 0.0, seed=1) == (recs, [])


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("data, message", [
    ({"train_file": "t.jsonl", "lr": 0}, "lr: Input should be greater than 0 (got 0)"),
    ({"train_file": "t.jsonl", "max_steps": 5, "warmup_steps": 5},
     "warmup_steps=5 must be < max_steps=5"),
    ({"train_file": "t.jsonl", "eval_file": "e.jsonl", "eval_fraction": 0.2},
     "give either eval_file or eval_fraction, not both"),
    ({"train_file": "t.jsonl", "eval_file": "t.jsonl"}, "eval_file is the training file; held-out data must differ"),
    ({"train_file": "t.jsonl", "model": "m", "output_dir": "m/"},
     "output_dir is the input model directory; write the fine-tuned model elsewhere"),
    ({"train_file": "t.jsonl", "lr_schedule": "step"}, "lr_schedule: Input should be 'constant', 'linear' or 'cosine'"),
    ({}, "train_file: required option is missing"),
    ({"train_file": "t.jsonl", "packing_mode": "x"}, "packing_mode: unknown option (see --help for the valid ones)"),
])
def test_sft_config_errors_are_one_line(data, message):
    with pytest.raises(ConfigError) as info:
        build(SFTConfig, data)
    assert str(info.value).startswith(message), str(info.value)


def test_every_sft_field_is_documented():
    for name, field in SFTConfig.model_fields.items():
        assert field.description and len(field.description) > 20, name
    assert len(help_lines(SFTConfig)) == len(SFTConfig.model_fields)
    assert math.isclose(SFTConfig(train_file="x").lr, 2e-5)
