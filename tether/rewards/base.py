"""Reward sources and their weighted combination.

A source is any callable ``(prompts: list[str], completions: list[str]) -> sequence of B floats``. A reward
model may also score token ids directly (``score_rollout``) when it shares the policy's tokenizer.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from tether.errors import ConfigError, RewardError

RewardFn = Callable[[list[str], list[str]], Any]


@dataclass
class RewardSource:
    """One named, weighted reward; ``normalize="batch"`` standardises its scores over each batch."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    normalize: str = "none"


def _as_scores(name: str, raw: Any, n: int, nonfinite: str = "raise") -> Tensor:
    try:
        scores = torch.as_tensor(raw if isinstance(raw, Tensor) else list(raw), dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward {name!r}: returned {type(raw).__name__}, not a list of numbers ({err})") from None
    scores = scores.reshape(-1) if scores.dim() > 1 and scores.numel() == n else scores
    if scores.dim() != 1 or scores.shape[0] != n:
        raise RewardError(f"reward {name!r}: returned {tuple(scores.shape)} values for {n} completions")
    bad = ~torch.isfinite(scores)
    if nonfinite == "raise" and bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise RewardError(f"reward {name!r}: non-finite value {float(scores[i])} for completion {i}")
    return scores


def combine_scores(
    sources: list[RewardSource], prompts: list[str], completions: list[str], rollout=None, *,
    nonfinite: str = "raise", device=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Call every source, check its output (B finite floats), normalise if asked and sum with weights.

    Returns ``(combined (B,), {name: raw scores (B,)})``, float32 on ``device`` (default: the rollout's device, or
    the CPU without a rollout), whatever device a source returned its scores on (a Python list, a reward model on
    another GPU); raw per-source scores are what the logs show. ``nonfinite="keep"`` passes NaN/Inf scores through
    (the PPO trainer then skips the update) instead of raising.
    """
    n = len(completions)
    if device is None:
        device = rollout.response_mask.device if rollout is not None else torch.device("cpu")
    total = torch.zeros(n, device=device)
    parts: dict[str, Tensor] = {}
    for src in sources:
        if rollout is not None and hasattr(src.fn, "score_rollout"):
            raw = src.fn.score_rollout(rollout)
        else:
            raw = src.fn(prompts, completions)
        scores = _as_scores(src.name, raw, n, nonfinite).to(device)  # checked on the CPU, then moved
        parts[src.name] = scores
        if src.normalize == "batch" and n > 1:
            scores = (scores - scores.mean()) / (scores.std(unbiased=False) + 1e-8)
        total = total + src.weight * scores
    return total, parts


def import_callable(spec: str) -> RewardFn:
    """``package.module:function`` or ``path/to/file.py:function`` (the file loaded by path) → the function; one-line
    ``ConfigError`` when it cannot be found."""
    if ":" not in spec:
        raise ConfigError(f"python reward {spec!r}: expected 'module:function' or 'FILE.py:function'")
    module_name, attr = spec.rsplit(":", 1)
    if module_name.endswith(".py"):
        module = _load_file(spec, Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"python reward {spec!r}: cannot import {module_name} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"python reward {spec!r}: {module_name} has no function {attr}")
    return fn


def _load_file(spec: str, path: Path):
    """The module of a ``.py`` file, loaded once per resolved path (registered in ``sys.modules`` under a private
    name, so dataclasses and pickling inside it work)."""
    import hashlib
    import importlib.util
    import sys

    if not path.is_file():
        raise ConfigError(f"python reward {spec!r}: file {path} not found")
    resolved = path.resolve()
    name = f"_tether_file_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, resolved)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as err:  # the user's file failed while loading: one line naming it
        del sys.modules[name]
        raise ConfigError(f"python reward {spec!r}: cannot import {path} ({type(err).__name__}: {err})") from None
    return module


def resolve_reward_sources(reward: Any, specs: list, policy_tokenizer=None, dtype=torch.float32,
                           trust_remote_code: bool = False) -> list[RewardSource]:
    """Turn what the user gave into ``RewardSource``s.

    ``reward`` (Python API) may be a reward-model directory, a callable, a ``RewardSource``, or a list of those or
    of ``(source, weight)`` pairs; when it is None the config's ``rewards`` specs are used.
    """
    from tether.rewards.reward_model import RewardModelScorer

    def one(item: Any, weight: float = 1.0, name: Optional[str] = None, normalize: str = "none") -> RewardSource:
        if isinstance(item, RewardSource):
            return item
        if isinstance(item, (str, Path)):
            scorer = RewardModelScorer.from_path(item, policy_tokenizer, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
            return RewardSource(name or Path(item).name, scorer, weight, normalize)
        if callable(item):
            return RewardSource(name or getattr(item, "__name__", type(item).__name__), item, weight, normalize)
        raise ConfigError(f"reward: cannot use {type(item).__name__} as a reward source")

    sources: list[RewardSource] = []
    if reward is not None:
        items = reward if isinstance(reward, (list, tuple)) and not isinstance(reward, str) else [reward]
        for item in items:
            if isinstance(item, tuple):
                sources.append(one(item[0], float(item[1])))
            else:
                sources.append(one(item))
    else:
        for spec in specs:
            if spec.kind == "model":
                src = one(spec.path, spec.weight, spec.name, spec.normalize)
            elif spec.kind == "python":
                src = one(import_callable(spec.path), spec.weight, spec.name or spec.path.split(":")[-1], spec.normalize)
            else:
                from tether.eval.judges import get_judge

                judge = get_judge(spec.path)
                src = RewardSource(spec.name or spec.path, lambda p, c, j=judge: j(c), spec.weight, spec.normalize)
            sources.append(src)
    if not sources:
        raise ConfigError("rewards: no reward source given (a reward-model directory, a Python function, or a list)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards: names must be unique, got {names}")
    for s in sources:
        if not math.isfinite(s.weight):
            raise ConfigError(f"reward {s.name!r}: weight must be finite")
    return sources
