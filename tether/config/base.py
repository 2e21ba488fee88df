"""Config machinery shared by every stage: frozen pydantic models, YAML files, dotted overrides, help text.

Each field is documented once, by the docstring under it (pydantic's ``use_attribute_docstrings``); ``--help``
is generated from those docstrings. Validation happens once, when the model is built; configs are frozen
afterwards, and derived sizes live elsewhere (never written back into a config).
"""

from __future__ import annotations

import difflib
import re
import shutil
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, ValidationError, WrapValidator

from tether.errors import ConfigError

C = TypeVar("C", bound="Section")


class Section(BaseModel):
    """Base of every config class: frozen, unknown keys refused, field docstrings become the help text."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
    )


def _resume_spec(value: str) -> str:
    if not value.strip():
        raise ValueError("must be auto, never, or the path of a checkpoint directory")
    return value.strip()


ResumeSpec = Annotated[str, AfterValidator(_resume_spec)]
"""The type of every stage's ``resume`` option: ``auto``, ``never`` or a checkpoint directory."""


def _output_dir(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a directory path")
    p = Path(value)
    for q in (p, *p.parents):  # the path, or the nearest of its parents that exists, must be a directory
        if q.exists():
            if not q.is_dir():
                raise ValueError(f"{q} exists and is not a directory" if q == p else
                                 f"{q} is a file, so {p} cannot be a directory")
            break
    return value


OutputDir = Annotated[str, AfterValidator(_output_dir)]
"""The type of every ``output_dir`` option: a directory path, refused when it (or the nearest existing parent) is a
file, so a run fails before it starts rather than when it first writes."""


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: str) -> str:
    v = value.strip()
    if not _DEVICE.match(v):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return v


DeviceName = Annotated[str, AfterValidator(_device)]
"""The type of every ``device`` option: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. Only the spelling is checked here; whether the device exists is checked when the stage starts
(``tether.engine.dist.setup``), so a config written on one machine stays valid on another."""


def _is_dataset(value: Any) -> bool:
    """A ``datasets.Dataset`` (checked by name, so the config layer never imports ``datasets``)."""
    return any(k.__name__ == "Dataset" and k.__module__.startswith("datasets") for k in type(value).__mro__)


def _data_source(value: Any, handler: Callable[[Any], str]) -> Any:
    if _is_dataset(value):
        return value
    if isinstance(value, Path):
        value = str(value)
    out = handler(value)
    if not out.strip():
        raise ValueError("must be a data file, glob, directory or Hub dataset name")
    return out


def _data_source_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return f"<datasets.Dataset {getattr(value, '_fingerprint', '?')}, {len(value)} rows>"


DataSource = Annotated[str, WrapValidator(_data_source), PlainSerializer(_data_source_text)]
"""The type of every data-file option: a path, glob, directory or cached Hub dataset name (read by
:func:`tether.data.readers.read_records`), or — from Python — a ``datasets.Dataset`` object, written to
``tether_config.yaml`` as its fingerprint and length."""


def format_validation_error(err: ValidationError, prefix: str = "", cls: type[BaseModel] | None = None,
                            given: Mapping[str, str] | None = None,
                            extra_names: Callable[[type], Iterable[str]] | None = None) -> str:
    """One line naming the dotted field, the problem and the value given (the first error only).

    With ``cls``, an unknown option gets "did you mean …" from the option names at that level (and ``extra_names``,
    e.g. the TRL aliases the level accepts) or a nested option of that name; ``given`` maps a tether path to the name
    the user typed (an alias), which the line then mentions."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = ".".join(x for x in (prefix, loc) if x)
    alias = (given or {}).get(loc)
    as_given = f" (given as {alias})" if alias and alias != loc else ""
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        hint = ""
        if cls is not None:
            names = suggest(cls, first["loc"], extra_names)
            parent = "".join(f"{p}." for p in (prefix, *map(str, first["loc"][:-1])) if p)
            hint = f"; did you mean {' or '.join(parent + n for n in names)}?" if names else ""
        return f"{field}: unknown option (see --help for the valid ones){hint}"
    if first["type"] == "missing":
        return f"{field}: required option is missing"
    input_ = first.get("input")
    shown = "" if isinstance(input_, (dict, list)) else f" (got {input_!r})"
    more = f" [and {len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    if first["type"] == "value_error" and not loc:
        return f"{field + ': ' if field else ''}{msg}{more}"
    return f"{field}: {msg}{shown}{as_given}{more}"


def nested_section(cls: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The config class of field ``key`` when it is a nested section (``Optional`` unwrapped), else None."""
    field = cls.model_fields.get(key)
    if field is None:
        return None
    ann = field.annotation
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    for a in (ann, *(typing.get_args(ann) if union else ())):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _item_section(cls: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The config class of the items of a ``list[Section]`` field (``rewards``), else None."""
    field = cls.model_fields.get(key)
    if field is None or typing.get_origin(field.annotation) is not list:
        return None
    (item,) = typing.get_args(field.annotation) or (None,)
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def section_at(cls: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The config class that holds the last part of a validation error's ``loc`` (list indices skipped)."""
    here: type[BaseModel] | None = cls
    parts = list(loc[:-1])
    i = 0
    while here is not None and i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            i += 1
            continue
        nxt = nested_section(here, str(part))
        if nxt is None:
            item = _item_section(here, str(part))
            if item is not None and i + 1 < len(parts) and isinstance(parts[i + 1], int):
                here, i = item, i + 2
                continue
            return None
        here, i = nxt, i + 1
    return here


def option_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every option of ``cls`` as a dotted path, nested sections included (``monitor.alarms.kl_max``)."""
    out = []
    for name in cls.model_fields:
        sub = nested_section(cls, name)
        out += option_paths(sub, f"{prefix}{name}.") if sub is not None else [f"{prefix}{name}"]
    return out


def suggest(cls: type[BaseModel], loc: Sequence[Any], extra_names: Callable[[type], Iterable[str]] | None = None,
            n: int = 3) -> list[str]:
    """Names to offer for the unknown option at ``loc``: close spellings at its level, or the nested options of
    that name (``eval_every`` → ``monitor.eval_every``), as paths relative to that level."""
    here = section_at(cls, loc)
    if here is None or not loc:
        return []
    key = str(loc[-1])
    names = list(here.model_fields) + list(extra_names(here) if extra_names else [])
    nested = [p for p in option_paths(here) if "." in p and p.rsplit(".", 1)[1] == key]
    close = difflib.get_close_matches(key, names, n=n, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key.replace("-", "_"), names, n=n, cutoff=0.6)
    return list(dict.fromkeys([*nested, *close]))[:n]


def build(cls: type[C], data: dict[str, Any], prefix: str = "", *, given: Mapping[str, str] | None = None,
          extra_names: Callable[[type], Iterable[str]] | None = None) -> C:
    """Validate ``data`` into ``cls``; raise ``ConfigError`` with a one-line message on failure (see
    :func:`format_validation_error` for ``given`` and ``extra_names``)."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix, cls, given, extra_names)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; one-line ``ConfigError`` for a missing file, bad YAML or a non-mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of option: value")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (the value parsed as YAML: numbers, booleans, lists, null) to a copy."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. ppo.kl_coef=0.1")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty option name")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None, prefix: str = "") -> C:
    """Build ``cls`` from an optional YAML file plus dotted overrides; the only entry point for file configs."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return build(cls, data, prefix)


def dump(cfg: BaseModel) -> dict[str, Any]:
    """The resolved config as plain YAML-able data."""
    return cfg.model_dump(mode="json")


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # a validated type (DataSource): named by its base type
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(annotation)) + "}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _field_head(cls: type[BaseModel], name: str, key: str) -> tuple[str, str]:
    """``("key (type, default X)", description)`` of one plain field."""
    field = cls.model_fields[name]
    default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
    return f"{key} ({_type_name(field.annotation)}, {default})", " ".join((field.description or "").split())


def help_lines(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """``name (type, default X): description`` for every field, recursing into nested sections."""
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = nested_section(cls, name)
        if sub is not None:
            lines.append(f"{key}: {field.description or ''}".rstrip(": "))
            lines.extend(help_lines(sub, key + "."))
            continue
        head, desc = _field_head(cls, name, key)
        lines.append(f"{head}: {desc}")
    return lines


def help_groups(cls: type[BaseModel]) -> list[tuple[str, list[str]]]:
    """The fields of ``cls`` in ``--help`` groups: ``[(title, [field, ...])]``.

    A class names its groups in ``SECTIONS`` (title, first field), each running to the next group's first field;
    fields of a base class (``StepRun``) come after the subclass's own, under the base's groups; fields before any
    group's first field are under the title ``""``."""
    out: list[tuple[str, list[str]]] = []
    for k in cls.__mro__:
        if not (isinstance(k, type) and issubclass(k, BaseModel)) or k is BaseModel:
            continue
        own = [n for n in cls.model_fields if n in vars(k).get("__annotations__", {})]
        if not own:
            continue
        starts = dict((first, title) for title, first in vars(k).get("SECTIONS", ()))
        title = ""
        for name in own:
            title = starts.get(name, title)
            if not out or out[-1][0] != title or name in starts:
                out.append((title, []))
            out[-1][1].append(name)
    return [(t, names) for t, names in out if names]


def _wrap_entry(head: str, desc: str, width: int, indent: int) -> list[str]:
    """``head: desc`` wrapped to ``width``; the head is never broken, continuation lines hang 4 further in."""
    first = " " * indent + head + (":" if desc else "")
    if not desc:
        return [first]
    opts = dict(width=width, subsequent_indent=" " * (indent + 4), break_long_words=False, break_on_hyphens=False)
    if len(first) + 20 > width:  # a long head (an enum) on its own line, the text below it
        return [first, *textwrap.wrap(desc, initial_indent=" " * (indent + 4), **opts)]
    return textwrap.wrap(f"{first} {desc}", **opts)


def help_text(cls: type[BaseModel], width: int | None = None, prefix: str = "", indent: int = 0) -> str:
    """The options of ``cls`` for ``--help``: grouped (:func:`help_groups`), nested sections after the plain
    fields, each entry ``name (type, default X): description`` wrapped to ``width`` (default: the terminal's)."""
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    width = max(width, 50)
    lines: list[str] = []
    nested: list[str] = []
    for title, names in help_groups(cls):
        plain = [n for n in names if nested_section(cls, n) is None]
        nested += [n for n in names if nested_section(cls, n) is not None]
        if not plain:
            continue
        if title:
            lines.append(" " * indent + f"{prefix}[{title}]" if prefix else " " * indent + f"[{title}]")
        for name in plain:
            head, desc = _field_head(cls, name, f"{prefix}{name}")
            lines += _wrap_entry(head, desc, width, indent + 2)
    for name in nested:
        sub = nested_section(cls, name)
        assert sub is not None
        desc = " ".join((cls.model_fields[name].description or "").split())
        lines.append("")
        lines += _wrap_entry(f"{prefix}{name}", desc, width, indent)
        lines.append(help_text(sub, width, f"{prefix}{name}.", indent))
    return "\n".join(lines)


class StepRun(Section):
    """Checkpoint and resume options shared by the step-counted stages (SFT, reward model); docs/reliability.md."""

    SECTIONS: ClassVar[tuple[tuple[str, str], ...]] = (("checkpoints and resume", "resume"),
                                                       ("several processes", "sharding"))
    """`--help` groups: (title, first field); each group runs to the next one's first field."""

    resume: ResumeSpec = "auto"
    """`auto`: continue from the newest good checkpoint in output_dir (a finished run is left as it is); `never`:
    start over, refusing an output_dir that already holds a run; or the path of a checkpoint directory to continue
    from."""
    checkpoint_every: int = Field(100, ge=0)
    """Write a checkpoint (`output_dir/checkpoints/step-N/`) every this many optimizer steps and after the last; 0:
    only after the last."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on disk (the newest); older ones are deleted once a newer one is complete."""
    max_consecutive_skips: int = Field(5, ge=1)
    """Stop the run (exit code 3, last checkpoint kept) after this many optimizer steps in a row skipped because the
    loss or a gradient was NaN/Inf."""
    sharding: Literal["none", "fsdp"] = "none"
    """Under `torchrun`/`accelerate launch` with several processes: `none` keeps a whole copy of the model, its
    gradients and AdamW state on every process (data parallel); `fsdp` splits them over the processes (torch FSDP2,
    one unit per transformer block), for models that do not fit one device; the update is the same either way. The
    saved files are the same; on one process `fsdp` has no effect (a note says so). SFT and the reward model; DPO
    refuses it (README, "Sharded training (FSDP)")."""
