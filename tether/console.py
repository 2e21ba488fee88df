"""Talking to the user, written once: messages, warnings and progress on stderr.

Every line goes through ``tqdm.write``, so it never breaks a bar being drawn. Progress is a bar on a terminal and,
off one (SLURM, nohup, CI), one plain line every ``every`` steps with the step, the key numbers, the elapsed time and
the ETA (:class:`LineProgress`), so logs keep one line per event and never a carriage return. During a run
(:func:`quiet_libraries`) transformers' and datasets' own bars and info logs are off, and their warnings and Python
warnings are written as lines through the bar. This is a base module: models, assets, data, engine, algos and the
monitor import it; it imports nothing of tether.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
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
    """``message`` on stdout (results and stage summaries), flushed, without breaking a bar on stderr."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def note(message: str) -> None:
    """``tether: <message>`` on stderr (:func:`say`)."""
    say(f"tether: {message}")


def warn(message: str) -> None:
    """``tether: warning: <message>`` on stderr (:func:`say`)."""
    say(f"tether: warning: {message}")


def progress(iterable: Any = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             enabled: bool = True, unit: str = "it", leave: bool = False, every: Optional[int] = None):
    """Progress on stderr when ``enabled``: a tqdm bar with ETA on a terminal; off one, a stage's run (``every``
    given, with ``total``) gets :class:`LineProgress` (one line every ``every`` steps and at the last), anything else
    a silent tqdm stand-in, as when not ``enabled`` (it still iterates, counts and accepts
    ``update``/``set_postfix``/``close``, writing nothing)."""
    from tqdm.auto import tqdm

    if enabled and not on_terminal() and every is not None and iterable is None and total:
        return LineProgress(total, desc=desc or "", unit=unit, every=every)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
                disable=not (enabled and on_terminal()))


def _clock(seconds: float) -> str:
    from tqdm import tqdm

    return tqdm.format_interval(max(0.0, seconds))


class LineProgress:
    """Progress off a terminal: ``tether: <desc> <unit> <n>/<total> <key=value ...> elapsed <t> eta <t>`` on
    stderr when the count reaches a multiple of ``every`` and at ``total``, so a fresh run of ``total`` steps prints
    ⌈total / every⌉ lines (a resumed one: those of the steps after ``initial``). It has the part of tqdm's interface
    the run loop uses: ``n``, ``initial``, ``update``, ``set_postfix``, ``refresh``, ``close``. Elapsed time and ETA
    count from this process's first step (a resumed run's rate is its own)."""

    def __init__(self, total: int, *, desc: str = "", unit: str = "it", every: int = 1):
        self.total, self.desc, self.every = int(total), desc, max(1, int(every))
        self.unit = "step" if unit == "it" else unit
        self.n = self.initial = 0
        self.postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def refresh(self) -> None:
        """Restart the clock at the current count (the run loop calls it after setting ``n``/``initial`` on a
        resume); writes nothing."""
        self._t0 = time.perf_counter()

    def set_postfix(self, ordered_dict: Optional[Mapping[str, Any]] = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """The numbers shown on the next line."""
        self.postfix = {**dict(ordered_dict or {}), **kwargs}

    def update(self, n: int = 1) -> None:
        """Count ``n`` steps; write a line when a multiple of ``every`` or the total is reached."""
        if n <= 0:
            return
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or (self.n >= self.total > before):
            say(self.line())

    def line(self) -> str:
        """The progress line as it stands."""
        elapsed = time.perf_counter() - self._t0
        done = self.n - self.initial
        eta = (self.total - self.n) * elapsed / done if done > 0 else float("nan")
        nums = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        head = f"tether: {self.desc} {self.unit}" if self.desc else f"tether: {self.unit}"
        return (f"{head} {self.n}/{self.total}" + (f" {nums}" if nums else "")
                + f" elapsed {_clock(elapsed)} eta {_clock(eta) if eta == eta else '?'}")

    def close(self) -> None:
        """Nothing to clear (tqdm's interface)."""


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


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    say(f"tether: warning: {category.__name__}: {message} ({filename}:{lineno})")


class _SayHandler(logging.Handler):
    """A library's log records as lines through :func:`say` (the stderr of the moment, never breaking a bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _lines_through_the_bar(loggers: list[logging.Logger]) -> Iterator[None]:
    """Swap each logger's console handlers (stdout/stderr) for a :class:`_SayHandler` with the same format and
    level; put them back afterwards."""
    swapped = []
    for lg in loggers:
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) is not None:
                say_h = _SayHandler(h.level)
                say_h.setFormatter(h.formatter)
                lg.removeHandler(h)
                lg.addHandler(say_h)
                swapped.append((lg, h, say_h))
    try:
        yield
    finally:
        for lg, h, say_h in swapped:
            lg.removeHandler(say_h)
            lg.addHandler(h)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """For the length of a run: transformers' and datasets' progress bars off and their logs at warnings and
    above, their log records and Python warnings written as single lines through the bar (:func:`say`); every
    setting is restored afterwards."""
    restore: list[Any] = []
    loggers: list[logging.Logger] = []
    try:
        from transformers.utils import logging as hf_logging

        bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity(max(level, logging.WARNING))
        restore.append(lambda: ((hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)(),
                                hf_logging.set_verbosity(level)))
        loggers.append(logging.getLogger("transformers"))
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets
        from datasets.utils import logging as ds_logging

        ds_bars, ds_level = datasets.is_progress_bar_enabled(), ds_logging.get_verbosity()
        datasets.disable_progress_bars()
        ds_logging.set_verbosity(max(ds_level, logging.WARNING))
        restore.append(lambda: ((datasets.enable_progress_bars if ds_bars else datasets.disable_progress_bars)(),
                                ds_logging.set_verbosity(ds_level)))
        loggers.append(logging.getLogger("datasets"))
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with _lines_through_the_bar(loggers):
            yield
    finally:
        warnings.showwarning = shown
        for undo in reversed(restore):
            undo()
