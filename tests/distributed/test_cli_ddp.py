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
    short = ("num_updates=3", "checkpoint_every=1")
    tether2(ppo_argv(whole, tiny_policy, data_dir, *short))
    rows = metrics(whole / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3]  # one writer
    events = list((whole / "tb").rglob("events.out.tfevents.*"))  # …<time>.<host>.<pid>.<n>
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # written by one process
    assert (whole / "final" / "model.safetensors").is_file() and (whole / "report.html").is_file()
    assert not list(whole.rglob("*.tmp-*"))
    # SIGKILL on both ranks after update 2 (the checkpoint of update 1 is the newest), then the same command again
    proc = tether2(ppo_argv(killed, tiny_policy, data_dir, *short), env={"TETHER_TEST_KILL_AT": "after-update:2"},
                   check=False)
    assert proc.returncode != 0 and not (killed / "final").exists()
    assert (killed / "checkpoints" / "update-000001").is_dir() and not (killed / "checkpoints" / "update-000002").exists()
    tether2(ppo_argv(killed, tiny_policy, data_dir, *short))
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


def test_pipeline_under_torchrun_gives_the_models_of_one_process(tmp_path, tiny_policy, data_dir):
    """SFT and the reward model of ``tether pipeline`` on 2 processes equal those of 1 process (float32: to float
    reduction order); PPO runs on their outputs and writes one set of files; the summaries are printed once."""
    from _dist import assert_weights_close, load_weights

    def argv(out: Path) -> list[str]:
        return ["pipeline", f"output_dir={out}", f"sft.model={tiny_policy}", f"sft.train_file={data_dir / 'sft.jsonl'}",
                "sft.max_steps=2", "sft.batch_size=4", "sft.eval_fraction=0", "sft.max_length=32", "sft.lr=3e-3",
                f"rm.model={tiny_policy}", f"rm.train_file={data_dir / 'pairs.jsonl'}", "rm.max_steps=2",
                "rm.batch_size=4", "rm.eval_fraction=0", "rm.max_length=32", "rm.lr=3e-3",
                f"ppo.prompts={data_dir / 'prompts.jsonl'}", "ppo.num_updates=1", "ppo.rollout_batch_size=4",
                "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.response_length=4"]

    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(argv(one)) == 0
    proc = tether2(argv(two))
    for stage in ("sft", "rm"):
        assert_weights_close(load_weights(one / stage), load_weights(two / stage), rtol=1e-4)
    assert proc.stdout.count("[ppo] done") == 1 and proc.stdout.count("[sft] done") == 1
    assert len((two / "ppo" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (two / "ppo" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("extra,line", [
    (("advantage=grpo", "samples_per_prompt=2", "dynamic_sampling=true"),
     "dynamic_sampling: not available on several processes yet"),
    (("rewards=[{kind: python, path: '_reliability_rewards:noisy_brevity', name: brevity, normalize: batch}]",),
     "rewards: normalize=batch is not available on several processes yet"),
], ids=["dynamic_sampling", "normalize_batch"])
def test_what_several_processes_cannot_do_yet_is_refused_in_one_line(tmp_path, tiny_policy, data_dir, extra, line):
    """Options whose result would differ per process are refused on both ranks, before anything is written."""
    out = tmp_path / "run"
    replaces_rewards = extra[-1].startswith("rewards=")
    argv = [a for a in ppo_argv(out, tiny_policy, data_dir) if not (replaces_rewards and a.startswith("rewards="))]
    proc = tether2([*argv, *extra], check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tether: error:")]
    assert len(lines) == 2 and all(line in ln for ln in lines), proc.stderr[-3000:]
    assert not [ln for ln in proc.stderr.splitlines() if '/tether/' in ln and '.py", line' in ln], proc.stderr[-3000:]
    assert not (out / "metrics.jsonl").exists() and not (out / "final").exists()


def test_dpo_is_refused_on_several_processes_in_one_line(tmp_path, tiny_policy, data_dir):
    from _reliability import dpo_argv

    out = tmp_path / "run"
    proc = tether2(dpo_argv(out, tiny_policy, data_dir), check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tether: error:")]
    assert lines and all("dpo: not available on several processes yet" in ln for ln in lines), proc.stderr[-3000:]
    assert not (out / "metrics.jsonl").exists()
