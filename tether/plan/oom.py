"""Redo a step with a smaller micro-batch after an out-of-memory error.

Micro-batching does not change an update (gradients accumulate over the minibatch with the minibatch's token
counts; tests/ppo's micro-batch invariance test), so a step that ran out of memory can be redone with a smaller
micro-batch and give the same result. The caller's ``step`` must start from the same state every time it is called
(zero the gradients first), which the trainers' steps do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def smaller_micro_batch(micro_batch: int, minibatch_size: int) -> int | None:
    """The largest divisor of ``minibatch_size`` that is at most half of ``micro_batch``; ``None`` below 1."""
    for m in range(micro_batch // 2, 0, -1):
        if minibatch_size % m == 0:
            return m
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA, MPS and XPU raise ``torch.OutOfMemoryError``)."""
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def retry_on_oom(step: Callable[[int], T], micro_batch: int, minibatch_size: int, *,
                 on_retry: Callable[[int, int], None] | None = None,
                 is_oom: Callable[[BaseException], bool] = is_out_of_memory) -> tuple[T, int]:
    """Run ``step(micro_batch)``; on an out-of-memory error free the CUDA cache, shrink the micro-batch
    (:func:`smaller_micro_batch`) and run it again. Returns ``(result, micro_batch that succeeded)``, so the caller
    keeps the smaller size for the next steps. ``on_retry(old, new)`` is called before each retry (to log it). At
    micro-batch 1 the error is raised as it is."""
    m = micro_batch
    while True:
        try:
            return step(m), m
        except BaseException as err:
            if not is_oom(err):
                raise
            smaller = smaller_micro_batch(m, minibatch_size)
            if smaller is None:
                raise
            del err
            _empty_cache()
            if on_retry is not None:
                on_retry(m, smaller)
            m = smaller


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
