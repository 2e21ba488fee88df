"""Config machinery shared by every stage: frozen pydantic models, YAML files, dotted overrides, help text.

Each field is documented once, by the docstring under it (pydantic's ``use_attribute_docstrings``); ``--help``
is generated from those docstrings. Validation happens once, when the model is built; configs are frozen
afterwards, and derived sizes live elsewhere (never written back into a config).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

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


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the dotted field, the problem and the value given (the first error only)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = ".".join(x for x in (prefix, loc) if x)
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        return f"{field}: unknown option (see --help for the valid ones)"
    if first["type"] == "missing":
        return f"{field}: required option is missing"
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
    more = f" [and {len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    if first["type"] == "value_error" and not loc:
        return f"{field + ': ' if field else ''}{msg}{more}"
    return f"{field}: {msg}{shown}{more}"


def build(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Validate ``data`` into ``cls``; raise ``ConfigError`` with a one-line message on failure."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix)) from None


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


def help_lines(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """``name (type, default X): description`` for every field, recursing into nested sections."""
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}: {field.description or ''}".rstrip(": "))
            lines.extend(help_lines(ann, key + "."))
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        desc = " ".join((field.description or "").split())
        lines.append(f"{key} ({_type_name(ann)}, {default}): {desc}")
    return lines


class StepRun(Section):
    """Checkpoint and resume options shared by the step-counted stages (SFT, reward model); docs/reliability.md."""

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
