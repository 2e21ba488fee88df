"""Read data files, ``datasets`` directories and cached Hub datasets into validated records.

Files are read by ``datasets.load_dataset`` (its ``json``, ``csv`` and ``parquet`` builders): ``.jsonl``, ``.json``
(JSON lines or one array of records), ``.csv``, ``.parquet``, each also ``.gz``/``.zst``/``.bz2``/``.xz`` compressed;
a glob (``data/*.jsonl``); a directory of data files (shards, split by name as the Hub lays them out:
``train-00000-of-00002.parquet``, ``data/train.jsonl``, …); a ``save_to_disk`` directory; or a Hub dataset name
(``org/name``) already in the local Hugging Face cache — never downloaded here (see :func:`resolve_hub_dataset`).
``NAME:split`` picks a split of a directory or a Hub dataset.

Column names follow TRL: ``prompt``/``completion``, ``messages`` (chat) or ``text`` for SFT; ``prompt``/``chosen``/
``rejected`` — or ``chosen``/``rejected`` alone, the prompt being their shared start — for preference pairs;
``prompt`` or ``messages`` for prompt files. Every record is checked as it is read, and the first bad one raises
:class:`tether.errors.DataError` with one line naming the file, the record and the problem, e.g.::

    data/train.jsonl line 7: 'prompt' is empty
    pairs.csv row 3: missing column 'rejected'
    x.jsonl.gz line 2: invalid JSON

What is counted: ``line N`` is the line of a JSON-lines file (1-based, blank lines counted, compressed files counted
after decompression); ``item N`` the record of a JSON array; ``row N`` the data row of a CSV file (the header and blank
lines not counted), of a parquet file, of a ``datasets`` directory split, of a Hub dataset's file or of a
``datasets.Dataset`` (1-based). When ``datasets`` cannot read a JSON or CSV file, or a record it read is refused,
tether reads the file itself to name the line and the problem exactly (``datasets`` reports a malformed JSON line
without its number); a file that tether's own reader accepts where ``datasets`` typed a column differently (numbers
in a text column, say) is read by tether's reader.

A chat turn is ``{"role": str, "content": str}``; ``content`` may also be a list of text parts
(``[{"type": "text", "text": ...}]``, joined with newlines; other part types are refused). A conversation is a
non-empty list of turns. In CSV files a ``messages`` cell holds the conversation as a JSON string.
"""

from __future__ import annotations

import contextlib
import csv
import glob as globlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tether.errors import DataError

RecordKind = Literal["sft", "preference", "prompt"]
KINDS: tuple[str, ...] = ("sft", "preference", "prompt")
FILE_TYPES = (".jsonl, .json, .csv or .parquet (also .gz/.zst compressed), a glob, a directory of such files, a "
              "datasets save_to_disk directory or a cached Hub dataset name")
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class _Bad(Exception):
    """A problem with one record; turned into a DataError that names the file and the line/row."""


# --------------------------------------------------------------------------------------------- tether's own scan


def _open_binary(path: Path, compression: str | None):
    if compression is None:
        return path.open("rb")
    if compression == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if compression == "bz2":
        import bz2

        return bz2.open(path, "rb")
    if compression == "xz":
        import lzma

        return lzma.open(path, "rb")
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency
        raise DataError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard)") from None
    return zstandard.open(path, "rb")


def _read_bytes(path: Path, name: str, compression: str | None) -> bytes:
    try:
        with _open_binary(path, compression) as f:
            return f.read()
    except DataError:
        raise
    except Exception as err:  # a corrupt archive: gzip, zstd, lzma raise their own types
        raise DataError(f"{name}: cannot decompress ({type(err).__name__}: {_first_line(err)})") from None


def _rows_jsonl(data: bytes, name: str) -> Iterator[tuple[str, Any]]:
    for number, raw in enumerate(io.BytesIO(data), start=1):
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


def _is_json_array(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _rows_json(data: bytes, name: str) -> Iterator[tuple[str, Any]]:
    """A ``.json`` file is either one JSON array of records or JSON lines."""
    if not _is_json_array(data):
        yield from _rows_jsonl(data, name)
        return
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(f"{name}: not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {err.lineno}: invalid JSON") from None
    for number, row in enumerate(parsed, start=1):
        yield f"{name} item {number}", row


def _rows_csv(data: bytes, name: str) -> Iterator[tuple[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not valid UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
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
        if not fields:  # a blank line: not a row
            continue
        number += 1
        where = f"{name} row {number}"
        if len(fields) > len(header):
            raise DataError(f"{where}: {len(fields)} fields but the header has {len(header)} columns")
        # a short row lacks its last columns (they are *missing*, not empty)
        yield where, dict(zip(header, fields)) | {"\0csv": True}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------------------------- through datasets


@contextlib.contextmanager
def _quiet_datasets():
    """``datasets`` without its progress bars and logs (restored afterwards): its failures reach the user as tether's
    one-line errors."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars = datasets.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # a file it cannot parse is logged as an ERROR with a traceback
    try:
        yield datasets
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def file_format(path: str | Path) -> tuple[str | None, str | None]:
    """``(format, compression)`` from a file name: ``("jsonl", "gzip")`` for ``x.jsonl.gz``; None when unknown."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def _load_file(builder: str, path: Path) -> Any:
    with _quiet_datasets() as datasets:
        return datasets.load_dataset(builder, data_files=str(path), split="train")


def _json_layout(path: Path, compression: str | None) -> list[int] | None:
    """``[]`` for a JSON array file; else the 1-based numbers of the non-blank lines of a JSON-lines file (the
    records ``datasets`` reads, in order), streamed, so a large file is never held in memory twice; None when the
    file cannot be read (tether's own reader then says why)."""
    try:
        with _open_binary(path, compression) as f:
            numbers, start = [], b""
            for n, raw in enumerate(f, start=1):
                if raw.strip(b" \t\r\n\xef\xbb\xbf"):
                    if not numbers and _is_json_array(start + raw):
                        return []
                    numbers.append(n)
                elif not numbers:
                    start += raw
            return numbers
    except Exception:  # a corrupt archive
        return None


def _file_records(path: Path, name: str, check: Callable[[Any], dict]) -> list[tuple[str, dict]]:
    """Validated ``(where, record)`` pairs of one data file, read by ``datasets`` (see the module docstring)."""
    fmt, compression = file_format(path)
    if fmt is None:
        raise DataError(f"{name}: unsupported data file type {''.join(path.suffixes[-2:]) or '(none)'!r}; "
                        f"use {FILE_TYPES}")
    if fmt == "parquet":
        try:
            ds = _load_file("parquet", path)
        except Exception as err:  # pyarrow and datasets raise several types for a corrupt file
            cause = err.__cause__ or err.__context__ or err
            raise DataError(f"{name}: cannot read parquet ({type(cause).__name__}: {_first_line(cause)})") from None
        return _checked(((f"{name} row {i}", row) for i, row in enumerate(ds, start=1)), check)
    own_rows = _rows_csv if fmt == "csv" else _rows_json
    try:
        ds = _load_file("csv" if fmt == "csv" else "json", path)
    except Exception:  # datasets names no line: tether's own reader below does
        ds = None
    if ds is not None:
        wheres: list[str] | None = None
        if fmt == "csv":
            wheres = [f"{name} row {i}" for i in range(1, len(ds) + 1)]
        else:
            numbers = _json_layout(path, compression)
            if numbers == []:
                wheres = [f"{name} item {i}" for i in range(1, len(ds) + 1)]
            elif numbers is not None and len(numbers) == len(ds):
                wheres = [f"{name} line {n}" for n in numbers]
        if wheres is not None:
            rows = (dict(row) | {"\0csv": True} if fmt == "csv" else row for row in ds)
            try:
                return _checked(zip(wheres, rows), check)
            except Exception:  # a refused record (or bytes Arrow cannot decode): the file itself names the line
                pass
    return _checked(own_rows(_read_bytes(path, name, compression), name), check)


def _checked(rows: Iterable[tuple[str, Any]], check: Callable[[Any], dict]) -> list[tuple[str, dict]]:
    out = []
    for where, row in rows:
        try:
            out.append((where, check(row)))
        except _Bad as bad:
            raise DataError(f"{where}: {bad}") from None
    return out


def _load_dataset_dir(path: Path, name: str, split: str | None) -> Any:
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{name}: cannot load datasets directory ({type(err).__name__}: {_first_line(err)})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[_pick_split(list(ds.keys()), split, name)]
    return ds


def _pick_split(splits: list[str], split: str | None, name: str) -> str:
    if split is None:
        if len(splits) == 1:
            return splits[0]
        if "train" in splits:
            return "train"
        raise DataError(f"{name}: several splits ({', '.join(splits)}); name one, e.g. {name}:{splits[0]}")
    if split not in splits:
        raise DataError(f"{name}: no split {split!r} (splits: {', '.join(splits)})")
    return split


def _data_dir_files(path: Path, name: str, split: str | None) -> list[Path]:
    """The data files of one split of a directory, split by file name as ``datasets`` does for Hub layouts."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(path))
        files = DataFilesDict.from_patterns(patterns, base_path=str(path))
    except Exception:  # no data file matches any pattern
        files = {}
    files = {s: [Path(f) for f in fs if file_format(f)[0]] for s, fs in files.items()}
    files = {s: fs for s, fs in files.items() if fs}
    if not files:
        raise DataError(f"{name}: a directory with no data files (.jsonl, .json, .csv, .parquet) and not a datasets "
                        "save_to_disk directory")
    return sorted(files[_pick_split(sorted(files), split, name)])


def resolve_hub_dataset(name: str) -> Path:
    """The local snapshot directory of Hub dataset ``name`` (``org/name``), from the hub cache only.

    tether never downloads data: the snapshot must be there (``hf download --repo-type dataset NAME``); with
    ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set nothing else would be tried anyway. Not cached: one-line DataError.
    """
    from tether.hub import cached_snapshot, download_command, hub_cache_dir

    snap = cached_snapshot(name, "dataset")
    if snap is None:
        raise DataError(f"{name}: no such file, and no dataset of that name in the local Hugging Face cache "
                        f"({hub_cache_dir()}); download it first: {download_command(name, 'dataset')}")
    return snap


def _sources(source: Any, split: str | None) -> tuple[str, list[Any]]:
    """(display name, units): each unit a ``(path, name)`` data file or an iterator of ``(where, raw row)``."""
    if isinstance(source, (str, Path)):
        name = str(source)
        path = Path(source)
        if split is None and not path.exists() and ":" in name:  # "NAME:split" names a split
            base, _, maybe_split = name.rpartition(":")
            if Path(base).is_dir() or (not Path(base).exists() and _HUB_NAME.match(base) and "/" in base
                                       and not Path(base).parent.exists()):
                path, split, name = Path(base), maybe_split, base
        if any(c in name for c in "*?[") and not path.exists():
            files = sorted(Path(p) for p in globlib.glob(name, recursive=True) if Path(p).is_file())
            if not files:
                raise DataError(f"{name}: no file matches")
            return name, [(f, str(f)) for f in files]
        if not path.exists():
            if _HUB_NAME.match(name) and "/" in name and not file_format(name)[0] and not path.parent.exists():
                snap = resolve_hub_dataset(name)
                return name, [(f, f"{name}/{f.relative_to(snap)}") for f in _data_dir_files(snap, name, split)]
            raise DataError(f"{name}: file not found")
        if path.is_dir():
            if any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                ds = _load_dataset_dir(path, name, split)
                return name, [((f"{name} row {i}", row) for i, row in enumerate(ds, start=1))]
            return name, [(f, str(f)) for f in _data_dir_files(path, name, split)]
        return name, [(path, name)]
    try:
        import datasets

        if isinstance(source, datasets.DatasetDict):
            raise DataError("a DatasetDict has several splits; pass one split (e.g. ds['train'])")
        if isinstance(source, datasets.Dataset):
            return "dataset", [((f"dataset row {i}", row) for i, row in enumerate(source, start=1))]
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        return "records", [((f"record {i}", row) for i, row in enumerate(source, start=1))]
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


def _content(value: Any, col: str, i: int) -> str:
    """A turn's ``content``: a string, or a list of text parts joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value, start=1):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                what = f"type {kind!r}" if isinstance(part, dict) else f"a {type(part).__name__}"
                raise _Bad(f"{col!r} turn {i}: content part {k} is {what}; only text parts "
                           '({"type": "text", "text": ...}) are supported')
            if not isinstance(part.get("text"), str):
                raise _Bad(f"{col!r} turn {i}: content part {k} has no 'text' string")
            texts.append(part["text"])
        if not texts:
            raise _Bad(f"{col!r} turn {i}: 'content' is an empty list of parts")
        return "\n".join(texts)
    raise _Bad(f"{col!r} turn {i}: 'content' must be a string or a list of text parts, got {type(value).__name__}")


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
        if not isinstance(turn["role"], str):
            raise _Bad(f"{col!r} turn {i}: 'role' must be a string, got {type(turn['role']).__name__}")
        if not turn["role"].strip():
            raise _Bad(f"{col!r} turn {i}: 'role' is empty")
        extras = {k: v for k, v in turn.items() if v is not None}  # Arrow gives every turn every key, None if unset
        out.append({**extras, "role": turn["role"], "content": _content(turn["content"], col, i)})
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


def _present(row: dict, col: str) -> bool:
    """The column is there with a value (Arrow-backed rows hold every column of the file, None where a record had
    none)."""
    return col in row and row[col] is not None


def _shape(row: dict, shapes: Sequence[tuple[str, ...]]) -> str | None:
    """The first column of the first shape with a value in ``row``; else of the first shape whose column is there at
    all (so that its null gets reported); None when no shape's column is there."""
    for test in (_present, dict.__contains__):
        for cols in shapes:
            if any(test(row, c) for c in cols):
                return cols[0]
    return None


def _shared_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of an implicit-prompt pair: the start both share is the prompt.

    Conversations: the leading turns both share (each side keeps at least one turn of its own). Strings: the longest
    common prefix, cut back to the whitespace before the first word that differs, so each completion starts with
    that whitespace (``"\\n\\nHuman: hi\\n\\nAssistant:"`` + ``" Hello!"``).
    """
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            raise _Bad("'chosen' and 'rejected' share no leading message to take as the prompt; give the prompt "
                       "turns in a 'prompt' column")
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        limit = min(len(chosen), len(rejected))
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        boundary = n < limit and chosen[n].isspace() and rejected[n].isspace()
        if not boundary:  # inside a word (or at the end of one side): back to the whitespace before it
            while n > 0 and not chosen[n - 1].isspace():
                n -= 1
        while n > 0 and chosen[n - 1].isspace():
            n -= 1
        if not chosen[:n].strip():
            raise _Bad("no 'prompt' column and 'chosen' and 'rejected' share no leading text to take as the "
                       "prompt; add a 'prompt' column")
        return chosen[:n], chosen[n:], rejected[n:]
    raise _Bad("'chosen' and 'rejected' must both be strings or both be lists of messages")


def _has_assistant(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def _validate(row: Any, kind: str | None, required: Sequence[str], numeric: Sequence[str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _Bad(f"expected a JSON object, got {type(row).__name__}")
    out = {k: v for k, v in row.items() if k != "\0csv" and v is not None}
    if kind == "sft":
        shape = _shape(row, (("messages",), ("prompt", "completion"), ("text",)))
        if shape == "messages":
            out["messages"] = msgs = _messages(_value(row, "messages"), "messages", _is_csv(row))
            if not _has_assistant(msgs):
                raise _Bad("'messages' has no assistant turn to learn from")
        elif shape == "prompt":
            out["prompt"] = _text_or_messages(row, "prompt")
            out["completion"] = _text_or_messages(row, "completion")
            if isinstance(out["prompt"], list) != isinstance(out["completion"], list):
                raise _Bad("'prompt' and 'completion' must both be strings or both be lists of messages")
        elif shape == "text":
            out["text"] = _text(row, "text")
        else:
            raise _Bad("missing column 'prompt' (an SFT record needs 'prompt' and 'completion', 'messages' or 'text')")
    elif kind == "preference":
        if "prompt" in row or "chosen" not in row or "rejected" not in row:
            out["prompt"] = _text_or_messages(row, "prompt")
            out["chosen"] = _text_or_messages(row, "chosen")
            out["rejected"] = _text_or_messages(row, "rejected")
            if isinstance(out["prompt"], str) and isinstance(out["chosen"], list) and isinstance(out["rejected"], list):
                # UltraFeedback-binarized: a text prompt beside whole conversations that start with it
                out["prompt"], out["chosen"], out["rejected"] = _shared_prompt(out["chosen"], out["rejected"])
        else:  # implicit prompt (no 'prompt' column): the shared start of chosen and rejected
            out["prompt"], out["chosen"], out["rejected"] = _shared_prompt(
                _text_or_messages(row, "chosen"), _text_or_messages(row, "rejected"))
        kinds = {isinstance(out[c], list) for c in ("prompt", "chosen", "rejected")}
        if len(kinds) > 1:
            raise _Bad("'prompt', 'chosen' and 'rejected' must all be strings or all be lists of messages")
        if out["chosen"] == out["rejected"]:
            raise _Bad("'chosen' and 'rejected' are identical")
    elif kind == "prompt":
        shape = _shape(row, (("prompt",), ("messages",)))
        if shape == "prompt":
            out["prompt"] = _text_or_messages(row, "prompt")
        elif shape == "messages":
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

    ``source``: a path (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, each possibly compressed), a glob, a directory
    of data files or a ``datasets`` ``save_to_disk`` directory, a cached Hub dataset name (``NAME:split`` for a
    split; see the module docstring), a ``datasets.Dataset``, or a list of dicts.
    ``kind`` adds the column rules of a stage:

    - ``"sft"``: ``messages`` (with at least one assistant turn), or ``prompt`` + ``completion`` (both strings or
      both message lists), or ``text`` (the whole text is the target).
    - ``"preference"``: ``prompt``, ``chosen``, ``rejected`` (all strings, or all message lists), or ``chosen`` and
      ``rejected`` alone (the prompt is their shared start, :func:`_shared_prompt`; also when a text ``prompt`` sits
      beside conversations that hold it); chosen ≠ rejected.
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
    name, units = _sources(source, split)

    def check(row: Any) -> dict[str, Any]:
        return _validate(row, kind, required, numeric)

    records: list[tuple[str, dict[str, Any]]] = []
    for unit in units:
        if isinstance(unit, tuple):
            records += _file_records(unit[0], unit[1], check)
        else:
            records += _checked(unit, check)
    if not records:
        raise DataError(f"{name}: no records")
    return records


# --------------------------------------------------------------------------------------------- chat rendering


def has_chat_template(tokenizer: Any) -> bool:
    """True when ``tokenizer`` carries a chat template."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][:1] | upper }}{{ m['role'][1:] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The plain fallback of :func:`render_chat` as a Jinja chat template: what SFT saves into a template-less tokenizer
it trained on chat data, so that later stages and plain ``apply_chat_template`` render conversations the same way."""


def uses_chat(records: Iterable[dict[str, Any]]) -> bool:
    """True when any validated record holds a conversation (``messages`` or message-list columns)."""
    return any(isinstance(v, list) and v and isinstance(v[0], dict) and "role" in v[0]
               for rec in records for k, v in rec.items() if k in ("messages", "prompt", "completion", "chosen"))


def adopt_chat_template(tokenizer: Any, records: Iterable[dict[str, Any]]) -> bool:
    """Give a tokenizer without a chat template :data:`FALLBACK_CHAT_TEMPLATE` when ``records`` hold chat data
    (the text is unchanged: it is what :func:`render_chat` writes without a template). Saved with the tokenizer, the
    template makes the reward model, PPO, ``tether eval`` and plain transformers format chats as SFT did. Returns True
    when the template was set."""
    if tokenizer is None or has_chat_template(tokenizer) or not uses_chat(records):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    logging.getLogger(__name__).info("the tokenizer has no chat template: the plain 'Role: content' one used for "
                                     "this chat data is saved with it")
    return True


def render_chat(messages: list[dict[str, str]], tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """A conversation as text: the tokenizer's chat template when it has one, else a plain fallback.

    The fallback writes one ``Role: content`` line per turn, the tokenizer's EOS token right after each assistant
    turn (so the model learns to stop), and ``Assistant:`` as the generation prompt::

        User: Hi there\\nAssistant: Hello!<eos>\\n          (add_generation_prompt=False)
        User: Hi there\\nAssistant:                        (add_generation_prompt=True)

    :data:`FALLBACK_CHAT_TEMPLATE` is the same fallback as a Jinja template (SFT saves it into the tokenizer it
    trains, see :func:`adopt_chat_template`). Text made by a chat template may already hold the tokenizer's BOS:
    tokenise it with
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

    ``source``: a path, glob, directory or cached Hub dataset (as for :func:`read_records`) with a ``prompt`` or
    ``messages`` column, a ``datasets.Dataset``, or a list of strings, conversations or records. Prompts rendered by a chat template
    already contain the template's special tokens. Plain string prompts are returned unchanged. Tokenise them with
    :func:`tether.data.prompts.prompt_ids` (the tokenizer's BOS, once); :func:`tether.data.prompts.load_prompt_set`
    also keeps the file line of each prompt.
    """
    return [p if isinstance(p, str) else render_chat(p, tokenizer, add_generation_prompt=True)
            for p in read_prompts(source)]
