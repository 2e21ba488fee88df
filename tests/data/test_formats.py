"""Data shaped like the public sets people bring, in every container ``datasets`` reads: compressed JSON lines,
parquet shards, globs, CSV, a cached Hub dataset; implicit-prompt pairs; chat turns made of text parts; and the
one-line errors on top (the line of a bad record, even when ``datasets`` itself names none)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tether.data.readers import read_located, read_records
from tether.errors import DataError

# HH-RLHF (Anthropic/hh-rlhf): chosen/rejected are whole dialogues as strings; the prompt is their shared start.
HH = [
    {"chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is a classic choice.",
     "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Cats do not need names."},
    {"chosen": "\n\nHuman: Is tea healthy?\n\nAssistant: In moderation, yes.",
     "rejected": "\n\nHuman: Is tea healthy?\n\nAssistant: Instead drink soda all day."},
]
HH_PROMPTS = ["\n\nHuman: What is a good name for a cat?\n\nAssistant:", "\n\nHuman: Is tea healthy?\n\nAssistant:"]


def _conv(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# UltraFeedback-binarized (HuggingFaceH4/ultrafeedback_binarized): a text prompt beside whole conversations.
UF = [
    {"prompt": "Name a primary colour.", "prompt_id": "a1", "chosen": _conv("Name a primary colour.", "Red."),
     "rejected": _conv("Name a primary colour.", "Purple."), "score_chosen": 9.0, "score_rejected": 3.0},
    {"prompt": "What is 2+2?", "prompt_id": "b2", "chosen": _conv("What is 2+2?", "4"),
     "rejected": _conv("What is 2+2?", "5"), "score_chosen": 10.0, "score_rejected": 1.0},
]


def _write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rlhf_strings_gz_implicit_prompt(tmp_path):
    path = _write_jsonl(tmp_path / "hh.jsonl.gz", HH, gzip.open)
    recs = read_records(path, "preference")
    assert [r["prompt"] for r in recs] == HH_PROMPTS
    assert recs[0]["chosen"] == " Whiskers is a classic choice." and recs[0]["rejected"] == " Cats do not need names."
    # the prompt is cut back to a word boundary: "In…" and "Instead…" share "In", which is not the prompt's
    assert recs[1]["chosen"] == " In moderation, yes." and recs[1]["rejected"] == " Instead drink soda all day."
    assert all(r["prompt"] + r["chosen"] == h["chosen"] for r, h in zip(recs, HH))


def test_ultrafeedback_parquet_shards_conversational(tmp_path):
    import pandas as pd

    d = tmp_path / "uf" / "data"
    d.mkdir(parents=True)
    pd.DataFrame(UF[:1]).to_parquet(d / "train-00000-of-00002.parquet")
    pd.DataFrame(UF[1:]).to_parquet(d / "train-00001-of-00002.parquet")
    pd.DataFrame(UF[1:]).to_parquet(d / "test-00000-of-00001.parquet")
    located = read_located(tmp_path / "uf", "preference")
    assert [w for w, _ in located] == [f"{d}/train-00000-of-00002.parquet row 1",
                                       f"{d}/train-00001-of-00002.parquet row 1"]
    recs = [r for _, r in located]
    assert recs[0]["prompt"] == [{"role": "user", "content": "Name a primary colour."}]
    assert recs[0]["chosen"] == [{"role": "assistant", "content": "Red."}]
    assert recs[1]["rejected"] == [{"role": "assistant", "content": "5"}] and recs[1]["score_chosen"] == 10.0
    assert len(read_records(f"{tmp_path / 'uf'}:test", "preference")) == 1


def test_conversational_pairs_without_prompt_column(tmp_path):
    rows = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in UF]
    recs = read_records(_write_jsonl(tmp_path / "c.jsonl", rows), "preference")
    assert [r["prompt"] for r in recs] == [r["chosen"][:1] for r in UF]
    bad = [{"chosen": _conv("a", "b"), "rejected": _conv("c", "d")}]
    with pytest.raises(DataError) as info:
        read_records(_write_jsonl(tmp_path / "bad.jsonl", bad), "preference")
    assert str(info.value) == (f"{tmp_path}/bad.jsonl line 1: 'chosen' and 'rejected' share no leading message to "
                               "take as the prompt; give the prompt turns in a 'prompt' column")


def test_implicit_string_prompt_refused_without_shared_start(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [HH[0], {"chosen": "Yes please.", "rejected": "No thanks."}])
    with pytest.raises(DataError) as info:
        read_records(path, "preference")
    assert str(info.value) == (f"{path} line 2: no 'prompt' column and 'chosen' and 'rejected' share no leading text "
                               "to take as the prompt; add a 'prompt' column")


def test_prompt_completion_csv_zst_and_a_glob_of_jsonl_shards(tmp_path):
    import zstandard

    rows = [{"prompt": f"Say {i}.", "completion": f" {i}"} for i in range(4)]
    csv_text = "prompt,completion\n" + "".join(f'"{r["prompt"]}","{r["completion"]}"\n' for r in rows)
    (tmp_path / "pc.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(csv_text.encode()))
    assert read_records(tmp_path / "pc.csv.zst", "sft") == rows  # " 0" stays text, not the number 0
    for k in range(2):
        _write_jsonl(tmp_path / f"part-{k}.jsonl", rows[2 * k : 2 * k + 2])
    located = read_located(str(tmp_path / "part-*.jsonl"), "sft")
    assert [r for _, r in located] == rows
    assert [w for w, _ in located][2] == f"{tmp_path}/part-1.jsonl line 1"
    with pytest.raises(DataError, match=r"nothing-\*\.jsonl: no file matches$"):
        read_records(str(tmp_path / "nothing-*.jsonl"), "sft")


def test_messages_with_text_parts(tmp_path):
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]
    (tmp_path / "m.json").write_text(json.dumps([{"messages": parts}]))
    (rec,) = read_records(tmp_path / "m.json", "sft")
    assert rec["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                               {"role": "assistant", "content": "Hello."}]
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}]},
             {"role": "assistant", "content": "A cat."}]
    path = _write_jsonl(tmp_path / "img.jsonl", [{"messages": _conv("q", "a")}, {"messages": image}])
    with pytest.raises(DataError) as info:
        read_records(path, "sft")
    assert str(info.value) == (f"{path} line 2: 'messages' turn 1: content part 2 is type 'image'; only text parts "
                               '({"type": "text", "text": ...}) are supported')


def test_malformed_line_is_named_in_compressed_and_mixed_files(tmp_path, capfd):
    """datasets says only "Expected object or value" for a broken JSON line; tether's scan names it (after a blank
    line, in a gzip file). A file that datasets types differently from tether (an int in one row, a string in
    another; rows of different shapes) still reads."""
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"prompt": "a", "completion": " b"}\n\n{"prompt": "a", \n')
    with pytest.raises(DataError) as info:
        read_records(path, "sft")
    assert str(info.value) == f"{path} line 3: invalid JSON"
    assert capfd.readouterr().err == ""  # datasets' own error log (with its traceback) is kept quiet
    rows = [{"prompt": "p", "completion": " c", "n": 1}, {"messages": _conv("q", "a"), "n": "two"},
            {"text": "plain text"}]
    got = read_located(_write_jsonl(tmp_path / "mixed.jsonl", rows), "sft")
    assert [r for _, r in got] == rows and got[2][0].endswith("mixed.jsonl line 3")
    (tmp_path / "gap.jsonl").write_text('{"text": "a"}\n\n{"text": ""}\n')
    with pytest.raises(DataError, match=r"gap\.jsonl line 3: 'text' is empty$"):
        read_records(tmp_path / "gap.jsonl", "sft")


def _fake_hub_dataset(cache: Path, repo: str) -> Path:
    import pandas as pd

    root = cache / f"datasets--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("0" * 40)
    (snap / "data").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    pd.DataFrame(UF).to_parquet(snap / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(UF[:1]).to_parquet(snap / "data" / "test-00000-of-00001.parquet")
    return snap


def test_hub_dataset_name_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_dataset(tmp_path / "hub", "someorg/prefs")
    monkeypatch.chdir(tmp_path)
    located = read_located("someorg/prefs", "preference")
    assert len(located) == 2 and located[0][0] == "someorg/prefs/data/train-00000-of-00001.parquet row 1"
    assert len(read_records("someorg/prefs:test", "preference")) == 1
    with pytest.raises(DataError) as info:
        read_records("someorg/missing", "preference")
    assert str(info.value) == ("someorg/missing: no such file, and no dataset of that name in the local Hugging Face "
                               f"cache ({tmp_path / 'hub'}); download it first: hf download --repo-type dataset "
                               "someorg/missing")
