"""Graceful stop on SIGTERM / Ctrl-C: the training loops finish their current step, checkpoint, and stop.

While a :class:`StopRequest` is active, the first SIGTERM or SIGINT only records the request (a line on stderr says
so); the loop polls ``requested`` at each step boundary, writes a checkpoint and raises ``Preempted``. A second signal
raises ``KeyboardInterrupt`` at once: the step in progress is abandoned and nothing half-written is kept (checkpoint
writes are atomic). Outside the main thread signal handlers cannot be installed, and the request is never set.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

from tether.console import note

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager installing the two-stage SIGTERM/SIGINT handlers; restores the previous ones on exit."""

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        """Name of the first signal received (``"SIGTERM"``/``"SIGINT"``), or None."""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"{name} received twice")
        self.requested = name
        note(f"{name} received: finishing the current step, then writing a checkpoint and stopping (send it again "
             "to abort at once)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
