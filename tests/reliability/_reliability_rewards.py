"""Python rewards for the reliability tests (this directory is put on sys.path / PYTHONPATH by the tests)."""

from __future__ import annotations

import os
import random
import signal
import time

SIGNAL_AT_CALL: dict[str, int] = {}
"""Test switch for ``signalling``: {"call": n, "times": k} sends SIGTERM k times to this process on call n."""
_calls = {"n": 0}


def noisy_brevity(prompts, completions):
    """Shorter is better, plus a little noise from Python's global RNG (so resuming must restore that RNG)."""
    return [-len(c) / 100.0 + 0.01 * random.random() for c in completions]


def slow_brevity(prompts, completions):
    """noisy_brevity, slowly (a window for a signal from outside to land in the middle of a run)."""
    time.sleep(float(os.environ.get("TETHER_TEST_REWARD_SLEEP", "0.3")))
    return noisy_brevity(prompts, completions)


def signalling(prompts, completions):
    """noisy_brevity that sends SIGTERM to its own process as ``SIGNAL_AT_CALL`` says."""
    _calls["n"] += 1
    if SIGNAL_AT_CALL and _calls["n"] == SIGNAL_AT_CALL["call"]:
        for _ in range(SIGNAL_AT_CALL["times"]):
            os.kill(os.getpid(), signal.SIGTERM)
    return noisy_brevity(prompts, completions)


def reset_calls() -> None:
    _calls["n"] = 0


def nan_on_calls(prompts, completions):
    """noisy_brevity, but NaN for one completion on the calls listed in TETHER_TEST_NAN_CALLS (comma-separated,
    1-based), counted per process."""
    _calls["n"] += 1
    out = noisy_brevity(prompts, completions)
    if str(_calls["n"]) in os.environ.get("TETHER_TEST_NAN_CALLS", "").split(","):
        out[0] = float("nan")
    return out


def one_value(prompts, completions):
    """The wrong length: one value for the whole batch."""
    return [0.0]


def words(prompts, completions):
    """Not numbers at all."""
    return ["good" for _ in completions]


def always_nan(prompts, completions):
    return [float("nan")] * len(completions)


NOT_CALLABLE = 3
