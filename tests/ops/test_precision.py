"""The one compute-dtype rule: float32, or float64 when given float64."""

from __future__ import annotations

import pytest
import torch

from tether import ops


@pytest.mark.parametrize("dtype, expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_compute_dtype(dtype, expected):
    x = torch.tensor([1.5, -2.25], dtype=dtype)
    assert ops.compute_dtype(x) == expected
    y = ops.to_compute(x)
    assert y.dtype == expected and torch.equal(y, x.to(expected))


def test_the_ops_follow_it():
    """A bf16 reduction comes back float32, a float64 one float64 (a sample of the ops that use the rule)."""
    mask = torch.tensor([[True, True, False]])
    for dtype, expected in ((torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        v = torch.tensor([[0.5, 1.0, 9.0]], dtype=dtype)
        assert ops.masked_mean(v, mask).dtype == expected
        assert ops.sequence_sum(v, mask).dtype == expected
        assert ops.kl_penalty(v, v * 0.5, "k3").dtype == expected
