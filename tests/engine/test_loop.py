"""The run loop's pieces on their own: the resumable epoch order and the guarded optimizer step."""

from __future__ import annotations

import torch
from torch import nn

from tether.engine.loop import EpochOrder, guarded_step


def take(order: EpochOrder, n: int) -> list[list[list[int]]]:
    it = order.groups()
    return [next(it)[2] for _ in range(n)]


def test_epoch_order_resumes_mid_epoch_and_at_an_epoch_boundary():
    """A resumed order (state saved after k steps) yields exactly the steps an uninterrupted one yields after k."""
    n_rows, batch, accum, epochs = 7, 2, 2, 3  # 4 micro-batches an epoch, 2 steps an epoch
    full = take(EpochOrder(n_rows, batch, accum, epochs, seed=5), 6)
    assert sorted(i for step in full[:2] for mb in step for i in mb) == list(range(n_rows))  # one permutation
    assert full[:2] != full[2:4]  # a new permutation each epoch
    for k in (1, 2, 3):  # mid-epoch, at the end of an epoch (next micro-batch past the last), later
        first = EpochOrder(n_rows, batch, accum, epochs, seed=5)
        assert take(first, k) == full[:k]
        resumed = EpochOrder(n_rows, batch, accum, epochs, seed=5)
        resumed.load_state_dict(first.state_dict())
        assert take(resumed, 6 - k) == full[k:]


def test_epoch_order_ends_after_the_last_epoch():
    order = EpochOrder(3, 2, 1, 2, seed=0)
    assert len(list(order.groups())) == 4


def _model_with_grads(value: float) -> tuple[nn.Linear, torch.optim.Optimizer]:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return model, opt


def test_guarded_step_clips_and_steps():
    model, opt = _model_with_grads(3.0)
    before = [p.detach().clone() for p in model.parameters()]
    status = guarded_step({"m": list(model.parameters())}, {"m": opt}, 1.0, finite_loss=True)
    assert status.stepped and status.reason == "" and abs(status.norms["m"] - 3.0 * 3 ** 0.5) < 1e-6
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert abs(float(moved.norm()) - 1.0) < 1e-6  # the step is the clipped gradient (lr 1)


def test_guarded_step_skips_non_finite_gradient_or_loss_and_drops_the_gradients():
    for value, finite_loss, reason in ((float("nan"), True, "non-finite m gradient"),
                                       (1.0, False, "non-finite loss")):
        model, opt = _model_with_grads(value)
        before = [p.detach().clone() for p in model.parameters()]
        status = guarded_step({"m": list(model.parameters())}, {"m": opt}, 1.0, finite_loss=finite_loss)
        assert not status.stepped and status.reason == reason
        assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert all(p.grad is None for p in model.parameters())


def test_guarded_step_leaves_a_frozen_model_alone():
    model, opt = _model_with_grads(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    status = guarded_step({"m": list(model.parameters())}, {"m": opt}, None, True, frozen=("m",))
    assert status.stepped and all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
