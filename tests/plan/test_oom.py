"""Redo on out-of-memory (tether.plan.oom): the micro-batch shrinks through divisors of the minibatch, the step is
redone, other errors pass through."""

from __future__ import annotations

import pytest
import torch

from tether.plan.oom import retry_on_oom, smaller_micro_batch


def test_smaller_micro_batch_is_the_largest_divisor_at_most_half():
    assert smaller_micro_batch(8, 8) == 4
    assert smaller_micro_batch(6, 12) == 3
    assert smaller_micro_batch(3, 12) == 1
    assert smaller_micro_batch(12, 12) == 6
    assert smaller_micro_batch(9, 18) == 3  # 4 does not divide 18
    assert smaller_micro_batch(1, 8) is None


def _step_fitting(limit, tried):
    def step(m):
        tried.append(m)
        if m > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"done with {m}"
    return step


def test_retry_halves_until_the_step_fits_and_reports_each_retry():
    tried, retries = [], []
    result, m = retry_on_oom(_step_fitting(2, tried), 8, 16, on_retry=lambda a, b: retries.append((a, b)))
    assert (result, m) == ("done with 2", 2)
    assert tried == [8, 4, 2] and retries == [(8, 4), (4, 2)]


def test_retry_gives_up_at_one_and_passes_other_errors():
    with pytest.raises(torch.OutOfMemoryError):
        retry_on_oom(_step_fitting(0, []), 4, 4)

    def broken(m):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        retry_on_oom(broken, 4, 4)


def test_a_fitting_step_runs_once():
    tried = []
    assert retry_on_oom(_step_fitting(8, tried), 8, 8) == ("done with 8", 8)
    assert tried == [8]
