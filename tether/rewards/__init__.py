"""Where scores come from: reward models, Python functions, judges; combined with weights."""

from tether.rewards.base import RewardSource, combine_scores, resolve_reward_sources

__all__ = ["RewardSource", "combine_scores", "resolve_reward_sources"]
