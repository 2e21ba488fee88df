"""``--key value`` / ``--key=value`` / ``--flag`` / ``--no-flag`` on the command line as ``key=value`` overrides.

The ``tether`` commands take options as ``key=value`` (the value parsed as YAML; nested sections with dots). People
also type them as flags, the way ``transformers``' ``HfArgumentParser`` takes them: ``--kl_coef 0.1``,
``--ppo.kl_coef=0.1``, ``--per-device-train-batch-size 4``, ``--stop_at_eos false``, ``--no-stop_at_eos``. Which
tokens are values is decided from the config class (a boolean takes no value, or one boolean word), so
:func:`split_flags` needs the class; it passes the command's own flags (``--config FILE``, ``--resume WHERE``,
``--help``) through to argparse untouched. An unknown ``--name`` without ``=`` is refused at once (its value cannot be
told from the next option), with "did you mean"; ``--name=value`` and ``name=value`` of an unknown name go on to the
validation, which refuses them the same way.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional

from pydantic import BaseModel

from tether.config.base import nested_section, suggest
from tether.errors import ConfigError

Kind = Optional[Literal["bool", "value"]]
BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "1", "0"})
"""Words taken as the value of a boolean flag (``--stop_at_eos False``), as ``HfArgumentParser`` takes them."""


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    return bool(args) and all(a is bool or a is type(None) for a in args) and bool in args


def option_kind(cls: type[BaseModel], key: str, extra: Callable[[type], Mapping[str, bool]] | None = None) -> Kind:
    """``"bool"`` when ``key`` (dotted) is a boolean option of ``cls``, ``"value"`` for any other option, None when
    there is no such option. ``extra(section)`` gives the other names a section accepts (aliases, shortcuts) with
    whether each is a boolean."""
    here: type[BaseModel] = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        field = here.model_fields.get(part)
        if field is None:
            more = extra(here) if extra else {}
            if last and part in more:
                return "bool" if more[part] else "value"
            return None
        sub = nested_section(here, part)
        if last:
            return "bool" if sub is None and _is_bool(field.annotation) else "value"
        if sub is None:  # a mapping field takes any key below it (policies.sft=DIR); a plain field none
            return "value" if typing.get_origin(field.annotation) is dict else None
        here = sub
    return None  # pragma: no cover (the loop always returns)


def _resolve(cls: type[BaseModel], key: str, extra) -> tuple[str, Kind]:
    kind = option_kind(cls, key, extra)
    if kind is None and "-" in key:
        dashed = key.replace("-", "_")
        k2 = option_kind(cls, dashed, extra)
        if k2 is not None:
            return dashed, k2
    return key, kind


def _negated(cls: type[BaseModel], key: str, extra) -> Optional[str]:
    """``no-flag`` / ``no_flag`` / ``section.no-flag`` → ``flag`` (dotted) when that is a boolean option."""
    head, _, tail = key.rpartition(".")
    for p in ("no-", "no_"):
        if tail.startswith(p):
            cand = (head + "." if head else "") + tail[len(p):]
            resolved, kind = _resolve(cls, cand, extra)
            if kind == "bool":
                return resolved
    return None


def _unknown(cls: type[BaseModel], key: str, command: str, extra_names) -> ConfigError:
    parts = key.replace("-", "_").split(".")
    names = suggest(cls, parts, extra_names)
    prefix = ".".join(parts[:-1])
    hint = ("; did you mean " + " or ".join(f"--{prefix + '.' if prefix else ''}{n}" for n in names) + "?") if names \
        else ""
    return ConfigError(f"unrecognized arguments: --{key}{hint} (see `tether {command} --help`)")


def split_flags(cls: type[BaseModel], tokens: Sequence[str], passthrough: Mapping[str, bool], command: str,
                extra: Callable[[type], Mapping[str, bool]] | None = None,
                ) -> tuple[list[str], list[str]]:
    """``(tokens for argparse, key=value overrides)`` from the command line after the command name.

    ``passthrough`` maps the command's own flags to whether they take a value; everything else that starts with
    ``--`` is an option of ``cls`` (see the module docstring). Other tokens are overrides as typed (``key=value``;
    anything else is refused later by the override parser), in the order given: the last one wins. A lone ``--``
    makes every token after it an override."""
    extra_names = (lambda c: list(extra(c))) if extra else None
    flags: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        name = t.split("=", 1)[0]
        if t == "--":
            out += tokens[i + 1:]
            break
        if name in passthrough or (t.startswith("-") and not t.startswith("--") and len(t) > 1
                                   and not t[1:2].isdigit()):  # -h, or a short flag argparse will refuse
            flags.append(t)
            if passthrough.get(name) and "=" not in t and i + 1 < len(tokens):
                flags.append(tokens[i + 1])
                i += 1
        elif t.startswith("--") and len(t) > 2:
            body = t[2:]
            key, eq, value = body.partition("=")
            resolved, kind = _resolve(cls, key, extra)
            if kind is None and (neg := _negated(cls, key, extra)) is not None:
                if eq:
                    raise ConfigError(f"--{key}: takes no value (--{key} alone sets {neg}=false)")
                out.append(f"{neg}=false")
            elif eq:
                out.append(f"{resolved}={value}")  # unknown names too: the validation says "did you mean"
            elif kind is None:
                raise _unknown(cls, key, command, extra_names)
            elif kind == "bool":
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                if nxt is not None and nxt.lower() in BOOL_WORDS:
                    out.append(f"{resolved}={nxt}")
                    i += 1
                else:
                    out.append(f"{resolved}=true")
            else:
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                if nxt is None or (nxt.startswith("--") and len(nxt) > 2):
                    raise ConfigError(f"--{key}: expected a value (--{key} VALUE, --{key}=VALUE or {resolved}=VALUE)")
                out.append(f"{resolved}={nxt}")
                i += 1
        else:
            out.append(t)
        i += 1
    return flags, out


