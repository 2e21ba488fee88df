"""Variant names are defined once, by the code that implements them (the ops registries, the schedules, the
training dtypes); the config Literals that users write must name exactly those variants."""

from __future__ import annotations

import typing

import pytest

from tether import ops
from tether.config import ppo as ppo_config
from tether.config.ppo import PPOConfig
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig
from tether.engine.optim import SCHEDULES
from tether.models.precision import TRAIN_DTYPES
from tether.ops.advantages import CRITIC_ESTIMATORS, GROUP_ESTIMATORS
from tether.ops.rewards import MissingEOSMode, ScorePlacement


def choices(cls, name: str) -> set[str]:
    return set(typing.get_args(cls.model_fields[name].annotation))


@pytest.mark.parametrize("cls, field, implemented", [
    (PPOConfig, "advantage", set(ops.ADVANTAGE_ESTIMATORS)),
    (PPOConfig, "loss_aggregation", set(ops.AGGREGATION_MODES)),
    (PPOConfig, "kl_estimator", set(ops.KL_ESTIMATORS)),
    (PPOConfig, "score_placement", set(typing.get_args(ScorePlacement))),
    (PPOConfig, "missing_eos_mode", set(typing.get_args(MissingEOSMode))),
    (PPOConfig, "lr_schedule", set(SCHEDULES)),
    (SFTConfig, "lr_schedule", set(SCHEDULES)),
    (RMConfig, "lr_schedule", set(SCHEDULES)),
    (SFTConfig, "dtype", set(TRAIN_DTYPES)),
    (RMConfig, "dtype", set(TRAIN_DTYPES)),
])
def test_config_names_the_implemented_variants(cls, field, implemented):
    assert choices(cls, field) == implemented


def test_group_and_critic_estimators_agree_with_the_config_rules():
    assert ppo_config.GROUP == set(GROUP_ESTIMATORS)
    assert CRITIC_ESTIMATORS == {a for a in ops.ADVANTAGE_ESTIMATORS if PPOConfig(advantage=a, samples_per_prompt=2)
                                 .uses_critic}


def test_a_missing_variant_is_caught():
    """Negative control: a registry without one of the config's names does not compare equal."""
    implemented = set(ops.ADVANTAGE_ESTIMATORS) - {"rloo"}
    assert choices(PPOConfig, "advantage") != implemented
