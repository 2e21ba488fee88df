"""Python rewards of the multi-process CLI tests (this directory is on PYTHONPATH in the children): the noisy
brevity of the reliability tests, and versions of it that misbehave on one rank at one call."""

from __future__ import annotations

import os
import signal

from _reliability_rewards import noisy_brevity

_calls = {"n": 0}


def _on_rank_at_call() -> bool:
    """True on the rank ``TETHER_TEST_RANK`` at its ``TETHER_TEST_CALL``-th reward call."""
    _calls["n"] += 1
    return (os.environ.get("RANK") == os.environ.get("TETHER_TEST_RANK", "1")
            and _calls["n"] == int(os.environ.get("TETHER_TEST_CALL", "2")))


def sigterm_one_rank(prompts, completions):
    """noisy_brevity; SIGTERM to this process on the chosen rank and call."""
    if _on_rank_at_call():
        os.kill(os.getpid(), signal.SIGTERM)
    return noisy_brevity(prompts, completions)


def fail_one_rank(prompts, completions):
    """noisy_brevity; raises on the chosen rank and call."""
    if _on_rank_at_call():
        raise ValueError("this reward failed on purpose")
    return noisy_brevity(prompts, completions)
