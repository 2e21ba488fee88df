"""KL coefficient controllers: fixed, and adaptive (Ziegler et al. 2019).

Plain Python state (a float), so a checkpoint stores it with ``state_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class FixedKLController:
    """β stays at its initial value."""

    value: float

    def update(self, kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """``β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)``, updated once per rollout with that
    rollout's mean per-sequence KL (nats) and its number of episodes.

    Reference: lm-human-preferences ``AdaptiveKLController``; ppo_details.md F3; oracle O21.
    """

    value: float
    target: float
    horizon: float

    def __post_init__(self) -> None:
        for name in ("value", "target", "horizon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"adaptive KL controller: {name} must be > 0, got {getattr(self, name)}")

    def update(self, kl: float, n_steps: int) -> float:
        kl = float(kl)
        if not math.isfinite(kl):
            # min/max pass NaN through, so a NaN KL would silently turn β into NaN.
            raise ValueError(f"adaptive KL controller: kl must be finite, got {kl}")
        if n_steps < 0:
            raise ValueError(f"adaptive KL controller: n_steps must be >= 0, got {n_steps}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        factor = 1.0 + error * n_steps / self.horizon
        if not factor > 0:
            raise ValueError(
                f"adaptive KL controller: n_steps={n_steps} is too large for horizon={self.horizon} "
                f"(β would be multiplied by {factor} <= 0); use n_steps < 5·horizon"
            )
        self.value *= factor
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
