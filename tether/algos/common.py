"""What the offline stages (SFT, RM) share in their data: the held-out split."""

from __future__ import annotations

import random


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``round(fraction·n)`` records (at least 1 when fraction > 0 and n ≥ 2).
    Returns (train, eval) in the original order within each part."""
    n = len(records)
    if fraction <= 0 or n < 2:
        return list(records), []
    k = min(n - 1, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
