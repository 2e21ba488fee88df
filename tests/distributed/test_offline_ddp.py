"""Data-parallel SFT and reward-model training: 2 gloo processes on the CPU give the update of 1 process with the
whole batch (float64, weights to 1e-6 relative, logged loss and gradient norm too), and only rank 0 writes files."""

from __future__ import annotations

import pytest
from _dist import assert_weights_close, load_weights, records, run_worker

from _tiny import gpt2_lm, gpt2_rm, gpt2_tok, toy_pairs, toy_sft, write_jsonl

pytestmark = pytest.mark.xdist_group("distributed")


def _compare(tmp_path, stage: str, cfg: dict, keys: tuple[str, ...]) -> None:
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        run_worker({"stage": stage, "cfg": {**cfg, "output_dir": str(out)}}, tmp_path, nproc)
        outs[nproc] = out
    one, two = load_weights(outs[1]), load_weights(outs[2])
    assert_weights_close(one, two, rtol=1e-6)
    r1, r2 = records(outs[1]), records(outs[2])
    assert len(r1) == len(r2) and len(r1) >= 3  # one writer: as many lines as one process writes
    for a, b in zip(r1, r2):
        assert a.keys() == b.keys()
        for k in keys:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    # the update did move the weights (equality above is not that of two untrained models)
    tok = gpt2_tok()
    initial = (gpt2_lm if stage == "sft" else gpt2_rm)(len(tok) + 1, seed=3).double().state_dict()
    moved = max(float((one[k] - initial[k]).abs().max()) for k in one if k in initial and
                initial[k].shape == one[k].shape)
    assert moved > 1e-3
    # the files of one run: one set, nothing written by rank 1 beside them
    names1 = sorted(p.relative_to(outs[1]).as_posix() for p in outs[1].rglob("*") if "tb" not in p.parts)
    names2 = sorted(p.relative_to(outs[2]).as_posix() for p in outs[2].rglob("*") if "tb" not in p.parts)
    assert names1 == names2
    assert len(list((outs[2] / "tb").rglob("events.*"))) == len(list((outs[1] / "tb").rglob("events.*")))


def test_sft_two_processes_equal_one_process(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", toy_sft(14))
    # 14 rows, 3 per micro-batch, 2 micro-batches a step: 5 micro-batches (the last of 2 rows), 3 steps an epoch;
    # the two processes get 2+1 / 1+1 rows, so shares and steps are uneven
    cfg = {"train_file": str(data), "batch_size": 3, "grad_accum": 2, "num_epochs": 1, "eval_fraction": 0.0,
           "lr": 3e-2, "lr_schedule": "constant", "adam_eps": 1e-3, "log_every": 1, "max_length": 24,
           "checkpoint_every": 2, "device": "cpu"}
    _compare(tmp_path, "sft", cfg, ("loss", "grad_norm", "tokens", "lr"))


def test_rm_two_processes_equal_one_process(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(11))
    cfg = {"train_file": str(data), "batch_size": 3, "grad_accum": 1, "num_epochs": 1, "eval_fraction": 0.0,
           "lr": 3e-2, "lr_schedule": "constant", "adam_eps": 1e-3, "log_every": 1, "max_length": 24,
           "checkpoint_every": 2, "normalize": "shift", "device": "cpu"}
    _compare(tmp_path, "rm", cfg, ("loss", "accuracy", "margin", "grad_norm", "lr"))
