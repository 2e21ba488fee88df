"""The checkpoint format (tether.engine.checkpoint): round trip of weights, optimizer/scheduler/RNG state through
``torch.load(weights_only=True)``, detection of truncated/corrupt/incomplete/foreign checkpoints, pruning, the
`latest` pointer, and that state files holding code objects are refused."""

from __future__ import annotations

import fractions
import io
import json
import random

import numpy as np
import pytest
import torch

from tether.engine import checkpoint as ck
from tether.engine.optim import build_optimizer, build_scheduler
from tether.errors import CheckpointError


def _model(seed=0):
    from conftest import tiny_llama

    return tiny_llama(64, seed=seed)


def _write(root, step, model, **state):
    return ck.write_checkpoint(root, ck.checkpoint_name("step", step), models={"model": model},
                               state={"step": step, **state}, files={"metrics.jsonl": b'{"step": 1}\n'},
                               meta={"step": step, "stage": "sft"})


def test_round_trip_of_weights_optimizer_scheduler_and_rng(tmp_path):
    model = _model()
    opt = build_optimizer(model, 1e-3)
    sched = build_scheduler(opt, "cosine", 1, 10)
    for _ in range(2):
        model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = _write(tmp_path, 2, model, optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=ck.rng_state())
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    found = ck.open_checkpoint(path)
    assert found.step == 2 and found.meta["format_version"] == ck.FORMAT_VERSION
    assert found.read_bytes("metrics.jsonl") == b'{"step": 1}\n'
    other = _model(seed=1)
    found.load_model("model", other)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    state = found.load_state()  # weights_only=True inside
    opt2 = build_optimizer(other, 1e-3)
    sched2 = build_scheduler(opt2, "cosine", 1, 10)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want
    assert (tmp_path / "latest").read_text().strip() == "step-000002"


@pytest.mark.parametrize("damage,expect", [
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-10]), "truncated"),
    (lambda p: (p / "state.pt").write_bytes(bytes([(p / "state.pt").read_bytes()[0] ^ 1])
                                            + (p / "state.pt").read_bytes()[1:]), "checksum"),
    (lambda p: (p / "meta.json").unlink(), "incomplete checkpoint (no meta.json)"),
    (lambda p: (p / "meta.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "metrics.jsonl").unlink(), "metrics.jsonl is missing"),
])
def test_damaged_checkpoints_are_refused_in_one_line(tmp_path, damage, expect):
    path = _write(tmp_path, 1, _model())
    damage(path)
    with pytest.raises(CheckpointError) as err:
        ck.open_checkpoint(path)
    assert expect in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_state_with_code_is_refused(tmp_path):
    """A state.pt that would run code when unpickled (here: builds a Python object) is not loaded."""
    path = _write(tmp_path, 1, _model())
    buf = io.BytesIO()
    torch.save({"step": 1, "evil": fractions.Fraction(1, 3)}, buf)
    (path / "state.pt").write_bytes(buf.getvalue())
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["state.pt"] = {"bytes": len(buf.getvalue()), "sha256": ck.sha256_file(path / "state.pt")}
    (path / "meta.json").write_text(json.dumps(meta))
    found = ck.open_checkpoint(path)  # the file is what meta.json says…
    with pytest.raises(CheckpointError, match="state.pt: cannot be read"):
        found.load_state()  # …but weights_only refuses the object


def test_listing_pruning_and_temporaries(tmp_path):
    model = _model()
    for step in (1, 2, 3, 4):
        _write(tmp_path, step, model)
        ck.prune(tmp_path, 2)
    (tmp_path / ".tmp-step-000005-abc").mkdir()
    (tmp_path / "notes").mkdir()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000004", "step-000003"]
    ck.remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "notes", "step-000003", "step-000004"]
    # rewriting a step replaces it whole
    _write(tmp_path, 4, _model(seed=5))
    assert ck.open_checkpoint(tmp_path / "step-000004").step == 4


def test_write_failure_leaves_nothing(tmp_path):
    class Boom(dict):
        def __reduce_ex__(self, protocol):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.write_checkpoint(tmp_path, "step-000001", models={"model": _model()}, state={"x": Boom()}, files={},
                            meta={"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write(tmp_path):
    target = tmp_path / "latest"
    ck.atomic_write_text(target, "a\n")
    ck.atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n" and [p.name for p in tmp_path.iterdir()] == ["latest"]
