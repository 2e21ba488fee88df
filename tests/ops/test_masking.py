"""Oracles for tether/ops/masking.py: first-EOS masks, truncation (O6), masked reductions, whitening (O15).

References: ppo_details.md §0 (m[b, t]), D2, I1, I2, F4.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import ops

FAST = settings(max_examples=60, deadline=None)
EOS, PAD = 2, 0


@st.composite
def token_rows(draw, max_b: int = 5, max_r: int = 9, vocab: int = 5):
    """(B, R) token ids over a tiny vocabulary, so EOS (id 2) and pad (id 0) appear often, anywhere."""
    b = draw(st.integers(1, max_b))
    r = draw(st.integers(1, max_r))
    flat = draw(st.lists(st.integers(0, vocab - 1), min_size=b * r, max_size=b * r))
    return torch.tensor(flat, dtype=torch.long).view(b, r)


@st.composite
def values_and_mask(draw, max_b: int = 5, max_r: int = 9, min_valid: int = 1):
    """float64 values with a random (not necessarily prefix) mask holding at least ``min_valid`` True entries."""
    b = draw(st.integers(1, max_b))
    r = draw(st.integers(max(1, min_valid - b + 1), max_r))
    n = b * r
    vals = draw(st.lists(st.floats(-100, 100, allow_nan=False, width=64), min_size=n, max_size=n))
    bits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if sum(bits) < min_valid:
        bits[:min_valid] = [True] * min_valid
    x = torch.tensor(vals, dtype=torch.float64).view(b, r)
    m = torch.tensor(bits).view(b, r)
    return x, m


# ---------------------------------------------------------------------------------------------- index and masks


@FAST
@given(token_rows())
def test_first_true_index_matches_loop(tokens):
    bools = tokens == EOS
    got = ops.first_true_index(bools, dim=1)
    for b, row in enumerate(bools.tolist()):
        expected = next((t for t, flag in enumerate(row) if flag), len(row))
        assert int(got[b]) == expected
    # along dim 0 as well (the function takes any dim)
    got0 = ops.first_true_index(bools, dim=0)
    for t in range(bools.shape[1]):
        col = bools[:, t].tolist()
        assert int(got0[t]) == next((b for b, flag in enumerate(col) if flag), len(col))


def test_response_mask_from_eos():
    responses = torch.tensor(
        [
            [5, 6, 2, 7, 2],  # EOS at 2; the second EOS is after the first and is masked
            [2, 5, 5, 5, 5],  # EOS first
            [5, 5, 5, 5, 2],  # EOS at the last column
            [5, 5, 5, 5, 5],  # no EOS: everything valid, ℓ = R − 1
        ]
    )
    mask, has_eos = ops.response_mask_from_eos(responses, EOS)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)
    assert has_eos.tolist() == [True, True, True, False]


@FAST
@given(token_rows())
def test_response_mask_from_eos_matches_loop(tokens):
    mask, has_eos = ops.response_mask_from_eos(tokens, EOS)
    for b, row in enumerate(tokens.tolist()):
        ell = row.index(EOS) if EOS in row else len(row) - 1
        assert mask[b].tolist() == [t <= ell for t in range(len(row))]
        assert bool(has_eos[b]) == (EOS in row)


@FAST
@given(token_rows())
def test_truncate_after_eos(tokens):
    """O6: pads after the first EOS, the EOS itself kept, tokens before it unchanged, idempotent."""
    out = ops.truncate_after_eos(tokens, EOS, PAD)
    for row_in, row_out in zip(tokens.tolist(), out.tolist()):
        if EOS in row_in:
            ell = row_in.index(EOS)
            assert row_out[: ell + 1] == row_in[: ell + 1]  # EOS kept, prefix unchanged
            assert row_out[ell] == EOS
            assert row_out[ell + 1 :] == [PAD] * (len(row_in) - ell - 1)
        else:
            assert row_out == row_in
    assert torch.equal(ops.truncate_after_eos(out, EOS, PAD), out)


def test_response_mask_rejects_non_2d():
    with pytest.raises(ValueError, match=r"\(B, R\)"):
        ops.response_mask_from_eos(torch.tensor([1, 2, 3]), EOS)


# ---------------------------------------------------------------------------------------------- reductions


@FAST
@given(values_and_mask())
def test_masked_mean_equals_mean_of_selected(xm):
    x, m = xm
    selected = [v for v, keep in zip(x.flatten().tolist(), m.flatten().tolist()) if keep]
    # pads hold garbage, including NaN and Inf: they must not reach the result
    garbage = x.masked_fill(~m, float("nan"))
    garbage[..., -1] = torch.where(m[..., -1], garbage[..., -1], torch.tensor(float("inf"), dtype=x.dtype))
    assert math.isclose(float(ops.masked_sum(garbage, m)), math.fsum(selected), rel_tol=0, abs_tol=1e-9)
    assert math.isclose(
        float(ops.masked_mean(garbage, m)), math.fsum(selected) / len(selected), rel_tol=0, abs_tol=1e-12
    )
    mean = math.fsum(selected) / len(selected)
    var = math.fsum((v - mean) ** 2 for v in selected) / len(selected)  # biased
    assert math.isclose(float(ops.masked_var(garbage, m)), var, rel_tol=1e-12, abs_tol=1e-9)


def test_masked_mean_along_dim():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    got = ops.masked_mean(x, m, dim=1)
    assert got.tolist() == [1.5, 5.0, 0.0]  # a row with no valid entry gives 0, not NaN


def test_masked_var_is_biased():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    m = torch.ones(4, dtype=torch.bool)
    assert float(ops.masked_var(x, m)) == pytest.approx(1.25, abs=1e-15)  # population variance, not 5/3


@FAST
@given(values_and_mask(min_valid=2))
def test_masked_whiten_moments(xm):
    """O15 / I1: masked mean 0, biased var 1, pads exactly 0, equals whitening the gathered valid entries."""
    x, m = xm
    sel = x[m]
    var = float(sel.var(unbiased=False))
    if var < 1e-2:  # the 1e-8 epsilon in sqrt(σ² + ε) makes var(out) = σ²/(σ² + ε); keep that below 1e-6
        return
    out = ops.masked_whiten(x, m)
    assert out.dtype == torch.float64
    assert torch.all(out[~m] == 0)
    valid = out[m]
    assert abs(float(valid.mean())) <= 1e-12
    assert abs(float(valid.var(unbiased=False)) - 1.0) <= 1e-6
    assert float(valid.var(unbiased=False)) == pytest.approx(var / (var + 1e-8), abs=1e-12)
    # equals whitening the gathered 1-D vector of valid entries, written out by hand
    ref = [(v - float(sel.mean())) / math.sqrt(var + 1e-8) for v in sel.tolist()]
    assert torch.allclose(valid, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-10)


@FAST
@given(values_and_mask(min_valid=2))
def test_masked_whiten_shift_mean_false_keeps_mean(xm):
    x, m = xm
    sel = x[m]
    var = float(sel.var(unbiased=False))
    if var < 1e-2:
        return
    out = ops.masked_whiten(x, m, shift_mean=False)
    assert torch.all(out[~m] == 0)
    assert float(out[m].mean()) == pytest.approx(float(sel.mean()), abs=1e-10)
    assert abs(float(out[m].var(unbiased=False)) - 1.0) <= 1e-6


def test_masked_whiten_tf_example():
    """I2: the N blog's example. Biased variance gives 0.05081 for the first entry; unbiased would give 0.1394."""
    x = torch.tensor([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]], dtype=torch.float64)
    m = torch.ones_like(x, dtype=torch.bool)
    out = ops.masked_whiten(x, m, shift_mean=False)
    assert float(out[0, 0]) == pytest.approx(0.05081, abs=1e-4)
    # what the unbiased convention would have produced; we must be far from it
    unbiased_first = (1.2 - 1.6) / math.sqrt(x.var(unbiased=True).item() + 1e-8) + 1.6
    assert unbiased_first == pytest.approx(0.1394, abs=1e-4)
    assert abs(float(out[0, 0]) - unbiased_first) > 0.05
    # the exact biased value: σ² = 0.6/9
    assert float(out[0, 0]) == pytest.approx(-0.4 / math.sqrt(0.6 / 9 + 1e-8) + 1.6, abs=1e-12)


def test_masked_whiten_pad_columns_do_not_change_valid_entries():
    """O8: appending pad columns (any content) leaves the whitened valid entries unchanged."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    lengths = torch.tensor([1, 6, 3, 4])
    m = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    base = ops.masked_whiten(x, m)
    x_pad = torch.cat([x, torch.full((4, 3), 1e6, dtype=torch.float64)], dim=1)
    m_pad = torch.cat([m, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    padded = ops.masked_whiten(x_pad, m_pad)
    assert torch.allclose(padded[:, :6], base, rtol=0, atol=1e-13)  # summation order may differ by an ulp
    assert torch.all(padded[:, 6:] == 0)


def test_float32_in_float32_out_and_bf16_upcast():
    x = torch.randn(3, 4)
    m = torch.ones(3, 4, dtype=torch.bool)
    assert ops.masked_whiten(x, m).dtype == torch.float32
    assert ops.masked_mean(x.to(torch.bfloat16), m).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- bad arguments


def test_masked_ops_bad_arguments_raise():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="selects no elements"):
        ops.masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no elements"):
        ops.masked_whiten(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.masked_mean(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape mismatch"):
        ops.masked_sum(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        ops.masked_mean(x, torch.full((2, 3), 0.5))


def test_masked_whiten_with_the_moments_of_a_larger_batch_equals_a_slice_of_its_whitening():
    """A process holding part of the batch whitens with the whole batch's (μ, σ²): its rows then equal those rows
    of the whole batch whitened at once (float64), with and without shift_mean."""
    from tether.ops.masking import masked_mean, masked_var, masked_whiten

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3 + 1
    mask = torch.rand(6, 5, generator=g) > 0.3
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    for shift in (True, False):
        whole = masked_whiten(x, mask, shift_mean=shift)
        part = masked_whiten(x[2:5], mask[2:5], shift_mean=shift, moments=(float(mean), float(var)))
        torch.testing.assert_close(part, whole[2:5], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(masked_whiten(x[2:5], mask[2:5], shift_mean=shift), whole[2:5])


def test_reinforce_pp_estimators_whiten_through_the_hook():
    """The REINFORCE++ estimators whiten with the ``whiten`` they are given (a multi-process caller's)."""
    from tether.ops.advantages import ADVANTAGE_ESTIMATORS

    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 3, dtype=torch.bool)
    seen = []

    def whiten(values, m, shift_mean=True):
        seen.append(values.shape)
        return values * 0 + 7.0

    for name in ("reinforce_pp", "reinforce_pp_baseline"):
        adv, _ = ADVANTAGE_ESTIMATORS[name](rewards, None, mask, rewards.sum(1), gamma=1.0, lam=1.0, group_size=2,
                                            eps=1e-6, whiten=whiten)
        assert bool((adv == 7.0).all())
    assert seen == [torch.Size([4, 3])] * 2
