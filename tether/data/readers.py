"""Read JSONL, JSON, CSV, parquet files and ``datasets`` directories into validated records.

Column names follow TRL: ``prompt``/``completion``, ``messages`` (chat) or ``text`` for SFT; ``prompt``/``chosen``/
``rejected`` for preference pairs; ``prompt`` or ``messages`` for prompt files. Every record is checked as it is read,
and the first bad one raises :class:`tether.errors.DataError` with one line naming the file, the line (JSONL) or row
(CSV, parquet, datasets; 1-based, the CSV header not counted) and the problem, e.g.::

    data/train.jsonl line 7: 'prompt' is empty
    pairs.csv row 3: missing column 'rejected'
    x.jsonl line 2: invalid JSON

A chat turn is ``{"role": str, "content": str}``; a conversation is a non-empty list of turns. In CSV files a
``messages`` cell holds the conversation as a JSON string.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tether.errors import DataError

RecordKind = Literal["sft", "preference", "prompt"]
KINDS: tuple[str, ...] = ("sft", "preference", "prompt")
FILE_TYPES = ".jsonl, .json, .csv, .parquet or a datasets directory (save_to_disk)"


class _Bad(Exception):
    """A problem with one record; turned into a DataError that names the file and the line/row."""


# --------------------------------------------------------------------------------------------- raw rows per format


def _rows_jsonl(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{name} line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not valid UTF-8") from None
            if number == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{where}: invalid JSON") from None


def _rows_json(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """A ``.json`` file is either one JSON array of records or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not valid UTF-8") from None
    if not text.lstrip().startswith("["):
        yield from _rows_jsonl(path, name)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {err.lineno}: invalid JSON") from None
    for number, row in enumerate(data, start=1):
        yield f"{name} item {number}", row


def _rows_csv(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{name}: empty file (no header row)") from None
            except csv.Error as err:
                raise DataError(f"{name} row 0 (header): invalid CSV ({err})") from None
            header = [h.strip() for h in header]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(f"{name}: duplicate column {dupes[0]!r} in the header")
            number = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise DataError(f"{name} row {number + 1}: invalid CSV ({err})") from None
                number += 1
                if not fields:  # a blank line
                    continue
                where = f"{name} row {number}"
                if len(fields) > len(header):
                    raise DataError(f"{where}: {len(fields)} fields but the header has {len(header)} columns")
                # a short row lacks its last columns (they are *missing*, not empty)
                yield where, dict(zip(header, fields)) | {"\0csv": True}
    except UnicodeDecodeError:
        raise DataError(f"{name}: not valid UTF-8") from None


def _rows_parquet(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{name}: cannot read parquet ({type(err).__name__}: {_first_line(err)})") from None
    for number, row in enumerate(rows, start=1):
        yield f"{name} row {number}", row


def _rows_dataset(dataset: Any, name: str) -> Iterator[tuple[str, Any]]:
    for number, row in enumerate(dataset, start=1):
        yield f"{name} row {number}", row


def _load_dataset_dir(path: Path, name: str, split: str | None) -> Any:
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{name}: cannot load datasets directory ({type(err).__name__}: {_first_line(err)})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if split is None:
            if len(splits) == 1:
                split = splits[0]
            elif "train" in splits:
                split = "train"
            else:
                raise DataError(f"{name}: several splits ({', '.join(splits)}); name one, e.g. {name}:{splits[0]}")
        if split not in ds:
            raise DataError(f"{name}: no split {split!r} (splits: {', '.join(splits)})")
        ds = ds[split]
    return ds


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _raw_rows(source: Any, split: str | None) -> tuple[str, Iterator[tuple[str, Any]]]:
    """(display name, iterator of (where, raw row))."""
    if isinstance(source, (str, Path)):
        name = str(source)
        path = Path(source)
        if split is None and not path.exists() and ":" in name:  # "dir:split" names a DatasetDict split
            base, _, maybe_split = name.rpartition(":")
            if Path(base).is_dir():
                path, split, name = Path(base), maybe_split, base
        if not path.exists():
            raise DataError(f"{name}: file not found")
        if path.is_dir():
            if not any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                raise DataError(f"{name}: a directory, but not a datasets save_to_disk directory")
            return name, _rows_dataset(_load_dataset_dir(path, name, split), name)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return name, _rows_jsonl(path, name)
        if suffix == ".json":
            return name, _rows_json(path, name)
        if suffix == ".csv":
            return name, _rows_csv(path, name)
        if suffix in (".parquet", ".pq"):
            return name, _rows_parquet(path, name)
        raise DataError(f"{name}: unsupported data file type {suffix or '(none)'!r}; use {FILE_TYPES}")
    try:
        import datasets

        if isinstance(source, datasets.DatasetDict):
            raise DataError("a DatasetDict has several splits; pass one split (e.g. ds['train'])")
        if isinstance(source, datasets.Dataset):
            return "dataset", _rows_dataset(source, "dataset")
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        return "records", ((f"record {i}", row) for i, row in enumerate(source, start=1))
    raise DataError(f"cannot read data from a {type(source).__name__}; give a path ({FILE_TYPES}) or a list of records")


# --------------------------------------------------------------------------------------------- field checks


def _is_csv(row: dict) -> bool:
    return "\0csv" in row


def _value(row: dict, col: str) -> Any:
    if col not in row:
        raise _Bad(f"missing column {col!r}")
    value = row[col]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _Bad(f"{col!r} is null")
    return value


def _text(row: dict, col: str) -> str:
    value = _value(row, col)
    if not isinstance(value, str):
        raise _Bad(f"{col!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"{col!r} is empty")
    return value


def _messages(value: Any, col: str, from_csv: bool) -> list[dict[str, str]]:
    if from_csv and isinstance(value, str):
        if not value.strip():
            raise _Bad(f"{col!r} is empty")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _Bad(f"{col!r} is not a JSON list of messages") from None
    if not isinstance(value, list):
        raise _Bad(f"{col!r} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise _Bad(f"{col!r} is empty")
    out = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise _Bad(f"{col!r} turn {i} must be an object with 'role' and 'content', got {type(turn).__name__}")
        for key in ("role", "content"):
            if key not in turn or turn[key] is None:
                raise _Bad(f"{col!r} turn {i} has no {key!r}")
            if not isinstance(turn[key], str):
                raise _Bad(f"{col!r} turn {i}: {key!r} must be a string, got {type(turn[key]).__name__}")
        if not turn["role"].strip():
            raise _Bad(f"{col!r} turn {i}: 'role' is empty")
        out.append({**turn, "role": turn["role"], "content": turn["content"]})
    return out


def _text_or_messages(row: dict, col: str) -> str | list[dict[str, str]]:
    value = _value(row, col)
    if isinstance(value, str) and _is_csv(row) and value.lstrip().startswith("[{"):
        try:  # a CSV cell may hold a conversation as JSON; anything else is plain text
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, list):
            return _messages(decoded, col, False)
    if isinstance(value, str):
        return _text(row, col)
    if isinstance(value, list):
        return _messages(value, col, False)
    raise _Bad(f"{col!r} must be a string or a list of messages, got {type(value).__name__}")


def _number(row: dict, col: str) -> float:
    value = _value(row, col)
    if isinstance(value, bool):
        raise _Bad(f"{col!r} must be a number, got bool")
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(f"{col!r} is empty")
        try:
            value = float(value)
        except ValueError:
            raise _Bad(f"{col!r} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise _Bad(f"{col!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _Bad(f"{col!r} must be a finite number, got {value!r}")
    return float(value)


def _has_assistant(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def _validate(row: Any, kind: str | None, required: Sequence[str], numeric: Sequence[str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _Bad(f"expected a JSON object, got {type(row).__name__}")
    out = {k: v for k, v in row.items() if k != "\0csv"}
    if kind == "sft":
        if "messages" in row:
            out["messages"] = msgs = _messages(_value(row, "messages"), "messages", _is_csv(row))
            if not _has_assistant(msgs):
                raise _Bad("'messages' has no assistant turn to learn from")
        elif "prompt" in row or "completion" in row:
            out["prompt"] = _text_or_messages(row, "prompt")
            out["completion"] = _text_or_messages(row, "completion")
            if isinstance(out["prompt"], list) != isinstance(out["completion"], list):
                raise _Bad("'prompt' and 'completion' must both be strings or both be lists of messages")
        elif "text" in row:
            out["text"] = _text(row, "text")
        else:
            raise _Bad("missing column 'prompt' (an SFT record needs 'prompt' and 'completion', 'messages' or 'text')")
    elif kind == "preference":
        out["prompt"] = _text_or_messages(row, "prompt")
        out["chosen"] = _text_or_messages(row, "chosen")
        out["rejected"] = _text_or_messages(row, "rejected")
        kinds = {isinstance(out[c], list) for c in ("prompt", "chosen", "rejected")}
        if len(kinds) > 1:
            raise _Bad("'prompt', 'chosen' and 'rejected' must all be strings or all be lists of messages")
        if out["chosen"] == out["rejected"]:
            raise _Bad("'chosen' and 'rejected' are identical")
    elif kind == "prompt":
        if "prompt" in row:
            out["prompt"] = _text_or_messages(row, "prompt")
        elif "messages" in row:
            out["messages"] = _messages(_value(row, "messages"), "messages", _is_csv(row))
        else:
            raise _Bad("missing column 'prompt' (a prompt record needs 'prompt' or 'messages')")
        msgs = out.get("messages", out.get("prompt"))
        if isinstance(msgs, list) and msgs[-1]["role"] == "assistant":
            raise _Bad("a prompt conversation must not end with an assistant turn")
    elif kind is not None:
        raise ValueError(f"unknown record kind {kind!r}; choose one of {', '.join(KINDS)}")
    for col in required:
        value = _value(row, col)
        if isinstance(value, str) and not value.strip():
            raise _Bad(f"{col!r} is empty")
    for col in numeric:
        out[col] = _number(row, col)
    return out


def read_records(
    source: Any,
    kind: RecordKind | None = None,
    *,
    required: Sequence[str] = (),
    numeric: Sequence[str] = (),
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Read and validate every record of ``source``; the first bad one raises a one-line :class:`DataError`.

    ``source``: a path (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, or a ``datasets`` ``save_to_disk``
    directory, optionally ``dir:split`` for a DatasetDict), a ``datasets.Dataset``, or a list of dicts.
    ``kind`` adds the column rules of a stage:

    - ``"sft"``: ``messages`` (with at least one assistant turn), or ``prompt`` + ``completion`` (both strings or
      both message lists), or ``text`` (the whole text is the target).
    - ``"preference"``: ``prompt``, ``chosen``, ``rejected`` (all strings, or all message lists); chosen ≠ rejected.
    - ``"prompt"``: ``prompt`` (string or messages) or ``messages``, not ending with an assistant turn.

    ``required`` columns must be present and non-null/non-empty; ``numeric`` columns must hold finite numbers
    (CSV text is parsed) and come back as ``float``. Other columns are kept as they are. Blank JSONL/CSV lines are
    skipped. A source with no record at all is an error.
    """
    return [rec for _, rec in read_located(source, kind, required=required, numeric=numeric, split=split)]


def read_located(
    source: Any,
    kind: RecordKind | None = None,
    *,
    required: Sequence[str] = (),
    numeric: Sequence[str] = (),
    split: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """:func:`read_records` with the origin of each record: ``(where, record)`` pairs, ``where`` as the error messages
    write it (``data.jsonl line 7``, ``pairs.csv row 3``, ``records item 2``)."""
    name, rows = _raw_rows(source, split)
    records = []
    for where, row in rows:
        try:
            records.append((where, _validate(row, kind, required, numeric)))
        except _Bad as bad:
            raise DataError(f"{where}: {bad}") from None
    if not records:
        raise DataError(f"{name}: no records")
    return records


# --------------------------------------------------------------------------------------------- chat rendering


def has_chat_template(tokenizer: Any) -> bool:
    """True when ``tokenizer`` carries a chat template."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_chat(messages: list[dict[str, str]], tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """A conversation as text: the tokenizer's chat template when it has one, else a plain fallback.

    The fallback writes one ``Role: content`` line per turn, the tokenizer's EOS token right after each assistant
    turn (so the model learns to stop), and ``Assistant:`` as the generation prompt::

        User: Hi there\\nAssistant: Hello!<eos>\\n          (add_generation_prompt=False)
        User: Hi there\\nAssistant:                        (add_generation_prompt=True)

    Text made by a chat template may already hold the tokenizer's BOS: tokenise it with
    :func:`tether.data.prompts.prompt_ids`, which does not repeat it.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = []
    for m in messages:
        role = m["role"]
        end = eos if role == "assistant" else ""
        parts.append(f"{role[:1].upper()}{role[1:]}: {m['content']}{end}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return "".join(parts)


def read_prompts(source: Any, *, split: str | None = None) -> list[str | list[dict[str, str]]]:
    """Prompts as given: plain strings, or conversations (lists of turns) from a ``messages`` or chat ``prompt``.

    ``source``: a path or dataset as for :func:`read_records`, or a list of strings / conversations / records.
    """
    return [p for _, p in located_prompts(source, split=split)]


def located_prompts(source: Any, *, split: str | None = None) -> list[tuple[str, str | list[dict[str, str]]]]:
    """:func:`read_prompts` with the origin of each prompt: ``(where, prompt)`` pairs (``prompts.jsonl line 7``; a
    list given in Python is ``prompts item N``, 1-based)."""
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, str) for s in source):
        for i, s in enumerate(source, start=1):
            if not s.strip():
                raise DataError(f"prompts item {i}: prompt is empty")
        return [(f"prompts item {i}", s) for i, s in enumerate(source, start=1)]
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, list) for s in source):
        source = [{"messages": s} for s in source]
    return [(where, rec["prompt"] if "prompt" in rec else rec["messages"])
            for where, rec in read_located(source, "prompt", split=split)]


def load_prompts(source: Any, tokenizer: Any = None) -> list[str]:
    """Prompts as strings ready to tokenise: conversations go through :func:`render_chat` with
    ``add_generation_prompt=True`` (the tokenizer's chat template when it has one, else the plain fallback).

    ``source``: a path (``.jsonl``/``.json``/``.csv``/``.parquet``/datasets dir) with a ``prompt`` or ``messages``
    column, a ``datasets.Dataset``, or a list of strings, conversations or records. Prompts rendered by a chat template
    already contain the template's special tokens. Plain string prompts are returned unchanged. Tokenise them with
    :func:`tether.data.prompts.prompt_ids` (the tokenizer's BOS, once); :func:`tether.data.prompts.load_prompt_set`
    also keeps the file line of each prompt.
    """
    return [p if isinstance(p, str) else render_chat(p, tokenizer, add_generation_prompt=True)
            for p in read_prompts(source)]
