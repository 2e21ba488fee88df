"""Shortcuts of the PPO config, expanded into its own fields before validation (``PPOConfig``'s ``mode="before"``
validator calls :func:`expand_ppo_shortcuts`), so the validated and saved config only has the long form.

- ``reward_model: DIR`` (or a list of directories) → one ``rewards`` entry ``{kind: model, path: DIR}`` each;
- ``reward_fn: FILE.py:function`` or ``module:function`` (or a list) → ``{kind: python, path: ...}`` each;
- ``total_episodes: N`` → ``num_updates = ⌈N / rollout_batch_size⌉`` (TRL's ``num_total_batches``).

Shortcut entries come after the ``rewards`` given in full (in a pipeline, after the pipeline's own reward model).
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

SHORTCUTS: dict[str, str] = {
    "reward_model": "a reward-model directory, or a list of them: each becomes a `rewards` entry {kind: model, "
                    "path: DIR} (named after the directory)",
    "reward_fn": "a Python reward `FILE.py:function` (the file is loaded by path) or `module:function`, or a list: "
                 "each becomes a `rewards` entry {kind: python, path: ...} (named after the function)",
    "total_episodes": "prompts to train on, as in TRL: sets num_updates = ⌈total_episodes / rollout_batch_size⌉",
}
"""The PPO shortcuts and their help text (``tether ppo --help`` lists them)."""

_DEFAULT_ROLLOUT_BATCH = 16  # PPOConfig.rollout_batch_size's default (a test keeps the two equal)


def _as_list(key: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError(f"{key}: expected a path or a list of paths (got {value!r})")
    return [v.strip() for v in items]


def _model_names(paths: list[str]) -> list[str]:
    """Each directory's name; the last two parts where two directories share a name (runs/a/rm, runs/b/rm)."""
    names = [PurePath(p).name or p for p in paths]
    return [("/".join(PurePath(p).parts[-2:]) if names.count(n) > 1 else n) for p, n in zip(paths, names)]


def expand_ppo_shortcuts(data: Any) -> Any:
    """``data`` (a PPO mapping, before validation) with the shortcuts replaced by the fields they stand for."""
    if not isinstance(data, dict) or not any(k in data for k in SHORTCUTS):
        return data
    data = dict(data)
    extra: list[dict[str, Any]] = []
    if "reward_model" in data:
        paths = _as_list("reward_model", data.pop("reward_model"))
        extra += [{"kind": "model", "path": p, "name": n} for p, n in zip(paths, _model_names(paths))]
    if "reward_fn" in data:
        for spec in _as_list("reward_fn", data.pop("reward_fn")):
            if ":" not in spec:
                raise ValueError(f"reward_fn: expected FILE.py:function or module:function (got {spec!r})")
            extra.append({"kind": "python", "path": spec, "name": spec.rsplit(":", 1)[1]})
    if extra:
        rewards = data.get("rewards") or []
        if not isinstance(rewards, list):
            raise ValueError("rewards: must be a list of reward sources")
        data["rewards"] = [*rewards, *extra]
    if "total_episodes" in data:
        total = data.pop("total_episodes")
        if "num_updates" in data:
            raise ValueError("total_episodes and num_updates are both set; keep one")
        batch = data.get("rollout_batch_size", _DEFAULT_ROLLOUT_BATCH)
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total_episodes: must be a positive whole number of prompts (got {total!r})")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"rollout_batch_size: must be a positive integer (got {batch!r})")
        data["num_updates"] = math.ceil(total / batch)
    return data
