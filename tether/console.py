"""Talking to the user, written once: messages, warnings and progress bars on stderr.

Every line goes through ``tqdm.write``, so it never breaks a bar being drawn; bars show on a terminal and stay silent
otherwise, so CI logs keep one line per event. This is a base module: models, assets, data, engine, algos and the
monitor import it; it imports nothing of tether.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Optional, TextIO


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def say(message: str) -> None:
    """``message`` as one line on stderr that does not break a bar being drawn; printed on a terminal or not."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def out(message: str) -> None:
    """``message`` on stdout (results and stage summaries), flushed, without breaking a bar on stderr. Under a
    launcher of several processes only the main one (``RANK`` 0) prints them: the summaries are the same on all."""
    from tqdm.auto import tqdm

    if os.environ.get("RANK", "0") != "0":
        return

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def note(message: str) -> None:
    """``tether: <message>`` on stderr (:func:`say`)."""
    say(f"tether: {message}")


def warn(message: str) -> None:
    """``tether: warning: <message>`` on stderr (:func:`say`)."""
    say(f"tether: warning: {message}")


def progress(iterable: Any = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             enabled: bool = True, unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr with ETA when ``enabled`` and stderr is a terminal; a silent stand-in otherwise (it
    still iterates, counts and accepts ``update``/``set_postfix``/``close``, writing nothing)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
                disable=not (enabled and on_terminal()))


@contextlib.contextmanager
def library_bars(enabled: bool = True):
    """Let transformers draw its own bars (weight loading) only when ``enabled`` and stderr is a terminal; the
    previous setting is restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled and on_terminal() else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
