"""Progress bars (tqdm) that show on a terminal and stay silent otherwise, so CI logs keep one line per event.

Every long step of tether (asset building, SFT, RM, PPO, evaluation) uses :func:`progress`; the trainers' own
``tether.algos.common.progress_bar`` follows the same rule.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Optional, TextIO


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def progress(iterable: Any = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             enabled: bool = True, unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr with ETA when ``enabled`` and stderr is a terminal; a silent stand-in otherwise (it
    still iterates, counts and accepts ``update``/``set_postfix``/``close``, writing nothing)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
                disable=not (enabled and on_terminal()))


def say(message: str) -> None:
    """One line on stderr that does not break a bar being drawn (``tqdm.write``); printed on a terminal or not."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


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
