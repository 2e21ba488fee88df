"""What a Hugging Face user brings and takes away: a ``datasets.Dataset`` or public-shaped files into the stages, a
template-less base model on chat data through the whole pipeline (the chat template saved on the way), models by Hub
name from the local cache, reward scores that plain transformers reproduces, and a model card in every output."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import yaml
from _tiny import gpt2_lm, gpt2_rm, gpt2_tok, llama_rm

from tether.algos.rm import train_rm
from tether.algos.sft import train_sft
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig
from tether.data.preferences import encode_for_reward_model
from tether.data.readers import FALLBACK_CHAT_TEMPLATE, render_chat
from tether.errors import ModelError
from tether.models.card import model_card
from tether.models.scalar import card_notes, fold_score_affine, sequence_scores

ITEMS = ["film", "book", "song", "meal", "hotel", "phone"]


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _parts_conversations(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": [{"type": "text", "text": f"Describe the {ITEMS[i % 6]}."}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"The {ITEMS[i % 6]} is nice."}]}]}
            for i in range(n)]


def test_sft_takes_a_dataset_of_text_parts_and_saves_its_chat_template_and_card(tmp_path):
    import datasets
    from transformers import AutoTokenizer

    tok = gpt2_tok()
    assert not tok.chat_template
    train = datasets.Dataset.from_list(_parts_conversations(8))
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"), train_file=train, eval_fraction=0.25, max_steps=2,
                    batch_size=2, lr=1e-3)
    res = train_sft(cfg, model=gpt2_lm(len(tok) + 1), tokenizer=tok, progress=False)
    saved = AutoTokenizer.from_pretrained(res.output_dir)
    assert saved.chat_template == FALLBACK_CHAT_TEMPLATE
    conv = [{"role": "user", "content": "Describe the film."}, {"role": "assistant", "content": "Fine."}]
    # plain transformers now renders the conversation exactly as SFT trained on it (the template-less fallback)
    assert saved.apply_chat_template(conv, tokenize=False) == render_chat(conv, gpt2_tok())
    assert saved.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True) == \
        "User: Describe the film.\nAssistant:"
    front = _front_matter(res.output_dir / "README.md")
    assert front["library_name"] == "transformers" and front["model_name"] == "sft"
    assert front["tags"] == ["generated_from_trainer", "tether", "sft"] and "base_model" not in front
    card = (res.output_dir / "README.md").read_text()
    assert "a datasets.Dataset (8 rows)" in card and "| `max_steps` | 2 |" in card
    assert f"| `eval_loss` | {res.eval_loss:.6g} |" in card


def _hh(n: int) -> list[dict]:
    return [{"chosen": f"\n\nHuman: How was the {ITEMS[i % 6]}?\n\nAssistant: Great, lovely {ITEMS[i % 6]}.",
             "rejected": f"\n\nHuman: How was the {ITEMS[i % 6]}?\n\nAssistant: Awful, dreadful {ITEMS[i % 6]}."}
            for i in range(n)]


def test_rm_on_hh_shaped_gz_pairs_scores_the_same_in_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in _hh(12)))
    tok = gpt2_tok()
    cfg = RMConfig(output_dir=str(tmp_path / "rm"), train_file=str(path), eval_fraction=0.25, max_steps=3,
                   batch_size=4, lr=3e-3, normalize="shift_scale", init_head="always")
    res = train_rm(cfg, model=gpt2_rm(len(tok) + 1), tokenizer=tok, progress=False)
    assert res.normalization["folded_into"] == "transformer.ln_f.bias"
    plain = AutoModelForSequenceClassification.from_pretrained(res.output_dir).eval()
    rtok = AutoTokenizer.from_pretrained(res.output_dir)
    prompts = ["\n\nHuman: How was the film?\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:"]
    ids, mask = encode_for_reward_model(rtok, prompts, [" Great.", " A much longer answer than the other."],
                                        max_length=64)
    assert mask[0].sum() < mask[1].sum()  # right padding in row 0
    with torch.no_grad():
        ours = sequence_scores(plain, ids, mask)
        theirs = plain(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-6)  # float32: the two forwards may round differently
    card = (res.output_dir / "README.md").read_text()
    assert _front_matter(res.output_dir / "README.md")["tags"][-1] == "reward-model"
    assert "(transformer.ln_f.bias): plain `AutoModelForSequenceClassification` gives the same scores" in card
    assert f"| `accuracy` | {res.accuracy:.6g} |" in card and str(path) in card


def test_unfoldable_shift_is_said_loudly_and_old_offsets_still_load(tmp_path, caplog):
    """Llama has no bias in its score head nor its RMSNorm: the shift stays in config.json (what older tether RM
    directories hold as well), tether adds it, the log and the card say so."""
    from transformers import AutoModelForSequenceClassification

    tok = gpt2_tok()
    model = llama_rm(len(tok)).eval()
    ids = torch.tensor([tok("A fine answer")["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        before = sequence_scores(model, ids, torch.ones_like(ids))
        with caplog.at_level("WARNING"):
            where = fold_score_affine(model, scale=2.0, shift=0.5)
    assert where == "config" and "tether_score_offset" in caplog.text and "plain transformers" in caplog.text
    model.save_pretrained(tmp_path / "old")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "old").eval()
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(loaded, ids, torch.ones_like(ids)), 2 * before + 0.5,
                                   atol=1e-5, rtol=0)
        plain = loaded(input_ids=ids).logits[:, 0]
    torch.testing.assert_close(plain, 2 * before, atol=1e-5, rtol=0)  # exactly the offset the card names
    notes = card_notes({"mode": "shift_scale", "mean": 1.0, "std": 0.5, "n": 4, "shift": -2.0, "scale": 2.0,
                        "folded_into": "config"})
    assert notes[1].startswith("The shift (-2) cannot live in this architecture's weights")
    assert "`tether_score_offset` in config.json" in notes[1] and "scores are tether's minus that offset" in notes[1]


def _save_tiny_policy(d: Path) -> Path:
    from conftest import tiny_llama

    tok = gpt2_tok()
    tiny_llama(len(tok) + 1).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _fake_hub_model(cache: Path, repo: str) -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("1" * 40)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("1" * 40)
    return _save_tiny_policy(snap)


def test_models_by_hub_name_from_the_local_cache_and_bin_only_hint(tmp_path, monkeypatch):
    from tether.models.load import load_causal_lm, load_tokenizer, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _fake_hub_model(tmp_path / "hub", "tinyorg/tiny-llama")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tinyorg/tiny-llama") == snap
    model = load_causal_lm("tinyorg/tiny-llama")
    assert type(model).__name__ == "LlamaForCausalLM" and len(load_tokenizer("tinyorg/tiny-llama")) == 50257
    with pytest.raises(ModelError) as info:
        load_causal_lm("tinyorg/absent")
    assert str(info.value) == ("tinyorg/absent: no such model directory, and no model of that name in the local "
                               f"Hugging Face cache ({tmp_path / 'hub'}); download it first: hf download "
                               "tinyorg/absent")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((snap / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelError) as info:
        load_causal_lm(pickled)
    msg = str(info.value)
    assert msg.startswith(f"{pickled}: only pickle weights (pytorch_model.bin), which tether does not load; convert "
                          "them to safetensors once: python -c \"from transformers import AutoModelForCausalLM as M;")
    assert "\n" not in msg


def test_pipeline_on_a_template_less_base_with_chat_data(tmp_path, capsys):
    """SFT on conversations saves the fallback template; the reward model trains on conversational pairs without a
    prompt column; PPO renders chat prompts with the saved template. Every output has its model card."""
    from tether.cli import main

    base = _save_tiny_policy(tmp_path / "base")
    sft = tmp_path / "chat.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in _parts_conversations(6)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({
        "chosen": [{"role": "user", "content": f"Rate the {w}."}, {"role": "assistant", "content": "Lovely."}],
        "rejected": [{"role": "user", "content": f"Rate the {w}."}, {"role": "assistant", "content": "Awful."}]})
        + "\n" for w in ITEMS))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Tell me of the {w}."}]}) + "\n"
                               for w in ITEMS[:4]))
    out = tmp_path / "pipe"
    argv = ["pipeline", f"output_dir={out}", f"sft.model={base}", f"sft.train_file={sft}", "sft.max_steps=2",
            "sft.batch_size=2", "sft.eval_fraction=0", f"rm.model={base}", f"rm.train_file={pairs}",
            "rm.max_steps=2", "rm.batch_size=2", f"ppo.prompts={prompts}", "ppo.num_updates=1",
            "ppo.rollout_batch_size=2", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.response_length=4"]
    assert main(argv) == 0, capsys.readouterr().err
    from transformers import AutoTokenizer

    for d, stage in ((out / "sft", "sft"), (out / "rm", "reward-model"), (out / "ppo" / "final", "ppo")):
        assert AutoTokenizer.from_pretrained(d).chat_template == FALLBACK_CHAT_TEMPLATE, d
        front = _front_matter(d / "README.md")
        assert stage in front["tags"] and front["base_model"] == str(base if stage != "ppo" else out / "sft")
    assert "objective/score" in (out / "ppo" / "final" / "README.md").read_text()


def test_model_card_lists_a_hub_dataset_and_refuses_unknown_stages():
    card = model_card("sft", {"model": "someorg/base", "train_file": "someorg/chat:train", "output_dir": "runs/x",
                              "lr": 2e-5}, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "someorg/base" and front["datasets"] == ["someorg/chat"]
    assert "[someorg/base](https://huggingface.co/someorg/base)" in card and "| `loss` | 1.5 |" in card
    assert "| `lr` | 2e-05 |" in card and 'pipeline("text-generation", model="runs/x")' in card
    with pytest.raises(ValueError, match="unknown stage"):
        model_card("kto", {})


def test_data_options_take_a_dataset_from_python_and_read_as_paths_in_help():
    import datasets

    from tether.config.base import dump, help_lines

    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": " a", "rejected": " b"}])
    cfg = RMConfig(train_file=ds, normalize_file=ds)
    assert cfg.train_file is ds and dump(cfg)["train_file"] == f"<datasets.Dataset {ds._fingerprint}, 1 rows>"
    assert RMConfig(train_file=Path("pairs.jsonl")).train_file == "pairs.jsonl"
    lines = help_lines(RMConfig)
    for key in ("train_file (str, required)", "eval_file (str | null, default None)",
                "normalize_file (str | null, default None)"):
        assert any(line.startswith(key) for line in lines), key
    from tether.errors import ConfigError
    from tether.config.base import build

    with pytest.raises(ConfigError, match=r"^train_file: must be a data file, glob, directory or Hub dataset name"):
        build(RMConfig, {"train_file": "  "})


def test_cli_sft_with_a_hub_model_and_a_hub_dataset_from_the_cache(tmp_path, monkeypatch, capsys):
    """`tether sft model=org/name train_file=org/data` offline: both resolve from the cache; the card names them."""
    import pandas as pd

    from tether.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_model(tmp_path / "hub", "tinyorg/tiny-llama")
    root = tmp_path / "hub" / "datasets--dataorg--chat"
    snap = root / "snapshots" / ("2" * 40)
    (snap / "data").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("2" * 40)
    pd.DataFrame([{"prompt": f"Say {w}.", "completion": f" {w}."} for w in ITEMS]).to_parquet(
        snap / "data" / "train-00000-of-00001.parquet")
    monkeypatch.chdir(tmp_path)
    argv = ["sft", "model=tinyorg/tiny-llama", "train_file=dataorg/chat", "output_dir=out", "max_steps=1",
            "batch_size=2", "eval_fraction=0"]
    assert main(argv) == 0, capsys.readouterr().err
    front = _front_matter(tmp_path / "out" / "README.md")
    assert front["base_model"] == "tinyorg/tiny-llama" and front["datasets"] == ["dataorg/chat"]
    capsys.readouterr()
    assert main(["sft", "model=tinyorg/other", "train_file=dataorg/chat", "output_dir=out2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tether: error: tinyorg/other: no such model directory, and no model of that name in the local "
                   f"Hugging Face cache ({tmp_path / 'hub'}); download it first: hf download tinyorg/other"]
    assert not (tmp_path / "out2").exists()
