"""tether: RLHF with PPO for Hugging Face causal language models.

The public API is imported lazily so ``import tether`` stays cheap (``tether.ops`` needs only torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PPOConfig": "tether.config.ppo",
    "RewardSpec": "tether.config.ppo",
    "PPOTrainer": "tether.algos.ppo_trainer",
    "SFTConfig": "tether.config.sft",
    "RMConfig": "tether.config.rm",
    "train_sft": "tether.algos.sft",
    "train_rm": "tether.algos.rm",
    "DPOConfig": "tether.config.dpo",
    "train_dpo": "tether.algos.dpo",
    "RewardSource": "tether.rewards.base",
    "CompareConfig": "tether.config.compare",
    "run_compare": "tether.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
