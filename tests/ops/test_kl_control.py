"""Oracles for tether/ops/kl_control.py: the adaptive KL controller of Ziegler et al. (O21, F3) and the fixed one.

β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/H), once per rollout, with that rollout's mean per-sequence KL.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import ops

N, H = 512, 10_000.0  # lm-human-preferences books: 512 episodes per batch, horizon 10k


def test_adaptive_kl_at_target_unchanged():
    ctl = ops.AdaptiveKLController(value=0.15, target=6.0, horizon=H)
    assert ctl.update(6.0, N) == 0.15
    assert ctl.value == 0.15


@pytest.mark.parametrize("kl", [1.2 * 6.0, 8.0, 12.0, 600.0])
def test_adaptive_kl_upper_clip(kl):
    """O21: KL ≥ 1.2·target ⇒ β·(1 + 0.2·n/H) exactly, i.e. ×1.01024 at n = 512, H = 1e4."""
    ctl = ops.AdaptiveKLController(value=0.15, target=6.0, horizon=H)
    new = ctl.update(kl, N)
    assert new == 0.15 * (1.0 + 0.2 * N / H)
    assert new / 0.15 == pytest.approx(1.01024, abs=1e-15)


@pytest.mark.parametrize("kl", [0.0, 0.8 * 6.0, -3.0])
def test_adaptive_kl_lower_clip(kl):
    """O21: KL = 0 (or anything ≤ 0.8·target, a negative k1 estimate included) ⇒ β·(1 − 0.2·n/H)."""
    ctl = ops.AdaptiveKLController(value=0.15, target=6.0, horizon=H)
    new = ctl.update(kl, N)
    assert new == 0.15 * (1.0 - 0.2 * N / H)
    assert new / 0.15 == pytest.approx(0.98976, abs=1e-15)


def test_adaptive_kl_inside_band_is_proportional():
    ctl = ops.AdaptiveKLController(value=0.1, target=6.0, horizon=H)
    assert ctl.update(6.6, N) == pytest.approx(0.1 * (1.0 + 0.1 * N / H), rel=1e-14)
    assert ctl.update(5.7, N) == pytest.approx(0.1 * (1.0 + 0.1 * N / H) * (1.0 - 0.05 * N / H), rel=1e-14)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100.0, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.integers(0, 40_000),
)
def test_adaptive_kl_beta_stays_positive(kls, n_steps):
    """F3: β stays > 0 and each step moves it by at most ±0.2·n/H, whatever the KL (n < 5·H)."""
    ctl = ops.AdaptiveKLController(value=0.05, target=6.0, horizon=H)
    for kl in kls:
        before = ctl.value
        after = ctl.update(kl, n_steps)
        assert after > 0
        assert abs(after / before - 1.0) <= 0.2 * n_steps / H + 1e-12


def test_fixed_controller_unchanged():
    ctl = ops.FixedKLController(0.05)
    for kl in (0.0, 6.0, 1e9, -5.0):
        assert ctl.update(kl, N) == 0.05
    assert ctl.value == 0.05


def test_state_dict_round_trip():
    ctl = ops.AdaptiveKLController(value=0.15, target=6.0, horizon=H)
    for kl in (12.0, 0.0, 7.0, 9.5):
        ctl.update(kl, N)
    state = ctl.state_dict()
    restored = ops.AdaptiveKLController(value=0.15, target=6.0, horizon=H)
    restored.load_state_dict(state)
    assert restored.value == ctl.value
    assert restored.update(8.0, N) == ctl.update(8.0, N)  # same trajectory after resuming
    fixed = ops.FixedKLController(0.05)
    other = ops.FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_bad_arguments_raise():
    for kw, name in (({"value": 0.0}, "value"), ({"target": -1.0}, "target"), ({"horizon": 0.0}, "horizon")):
        args = {"value": 0.1, "target": 6.0, "horizon": H, **kw}
        with pytest.raises(ValueError, match=name):
            ops.AdaptiveKLController(**args)
    ctl = ops.AdaptiveKLController(value=0.1, target=6.0, horizon=H)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="kl must be finite"):
            ctl.update(bad, N)
    assert ctl.value == 0.1  # a rejected update leaves β alone
    with pytest.raises(ValueError, match="n_steps"):
        ctl.update(6.0, -1)
    with pytest.raises(ValueError, match="too large"):
        ctl.update(0.0, 60_000)  # 1 − 0.2·6 < 0 would flip the sign of β
    assert ctl.value == 0.1
