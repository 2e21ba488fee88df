"""Kill-and-resume equality: a tiny PPO, SFT or RM run killed with SIGKILL at a named point (before the first
checkpoint, half-way through a checkpoint write, between a checkpoint's rename and the `latest` pointer, between
checkpoints, during the final model swap) and then re-run with the same command ends with the same weights (tensor
hashes) and the same metrics (timings aside) as a run that was never interrupted. Plus: a finished run is not
retrained, a changed config is refused, a corrupt newest checkpoint falls back to the previous one, and SIGTERM
checkpoints and exits 75."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability import (
    data_dir,  # noqa: F401  (fixture)
    leftovers,
    metrics,
    ppo_argv,
    rm_argv,
    run_cli,
    run_killed,
    sft_argv,
    tensor_hash,
    tiny_policy,  # noqa: F401  (fixture)
)

ROOT = Path(__file__).resolve().parents[2]
ARGV = {"ppo": ppo_argv, "sft": sft_argv, "rm": rm_argv}


def model_files(stage: str, out: Path) -> list[Path]:
    if stage == "ppo":  # the policy and the critic as saved (the default shared critic: its value head only)
        critic = sorted((out / "final" / "critic").glob("*.safetensors"))
        assert critic, f"{out}: no critic saved"
        return [out / "final" / "model.safetensors", *critic]
    return [out / "model.safetensors"]


def outcome(stage: str, out: Path) -> dict:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one."""
    res = {"weights": tensor_hash(*model_files(stage, out)), "metrics": metrics(out / "metrics.jsonl")}
    if stage == "ppo":
        res["samples"] = (out / "samples.jsonl").read_text()
    if stage == "rm":
        res["rm"] = json.loads((out / "tether_rm.json").read_text())
    return res


@pytest.fixture(scope="module")
def reference(tiny_policy, data_dir, tmp_path_factory):  # noqa: F811
    """Uninterrupted runs of each stage, made once."""
    cache: dict[str, dict] = {}

    def get(stage: str) -> dict:
        if stage not in cache:
            out = tmp_path_factory.mktemp(f"ref-{stage}") / "run"
            assert run_cli(ARGV[stage](out, tiny_policy, data_dir)) == 0
            cache[stage] = outcome(stage, out)
        return cache[stage]

    return get


KILLS = [
    ("ppo", "after-update:1"),                      # before the first checkpoint: starts over
    ("ppo", "checkpoint-write:update-000002"),      # half-written checkpoint: ignored, starts over
    ("ppo", "checkpoint-renamed:update-000004"),    # complete, `latest` still at update 2: resumes from 4
    ("ppo", "after-update:3"),                      # between checkpoints: metrics.jsonl cut back to update 2
    ("ppo", "checkpoint-renamed:update-000005"),    # final checkpoint written, final model not yet
    ("sft", "checkpoint-write:step-000004"),
    ("sft", "after-step:7"),                        # mid-epoch 2: data order replayed from the epoch's generator
    ("sft", "model-swap:run"),                      # between the two renames of the final save
    ("rm", "after-step:5"),
    ("rm", "checkpoint-write:step-000006"),
    ("rm", "after-step:16"),                        # the last step done, no final checkpoint, no normalisation
    ("rm", "model-swap:run"),                       # resumed from the final checkpoint: normalised and saved again
]


@pytest.mark.parametrize("stage,kill_at", KILLS, ids=[f"{s}-{k}" for s, k in KILLS])
def test_killed_then_resumed_equals_uninterrupted(stage, kill_at, tiny_policy, data_dir, tmp_path,  # noqa: F811
                                                  reference, capsys):
    out = tmp_path / "run"
    argv = ARGV[stage](out, tiny_policy, data_dir)
    run_killed(argv, kill_at)
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert outcome(stage, out) == reference(stage)
    assert leftovers(tmp_path) == []


def test_kill_in_resumed_run_then_resume_again(tiny_policy, data_dir, tmp_path, reference, capsys):  # noqa: F811
    """Two kills in a row (the second in the resumed run) still end where an uninterrupted run does."""
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir)
    run_killed(argv, "after-update:3")
    run_killed(argv, "checkpoint-write:update-000004")
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert "resuming from" in capsys.readouterr().err
    assert outcome("ppo", out) == reference("ppo")


def test_finished_run_is_not_retrained(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = sft_argv(out, tiny_policy, data_dir)
    assert run_cli(argv) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert run_cli([*argv, "log_every=5"]) == 0  # a logging option may change; still nothing to do
    said = capsys.readouterr()
    assert "skipped: finished model" in said.out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_changed_config_is_refused_in_one_line(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir)
    run_killed(argv, "after-update:3")
    capsys.readouterr()
    assert run_cli([*argv, "kl_coef=0.2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "kl_coef was 0.05, now 0.2" in lines[0], lines
    # the run is intact: the same command still resumes it
    assert run_cli(argv) == 0


def test_growing_the_run_needs_a_constant_schedule(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, "num_updates=2")
    assert run_cli(argv) == 0
    capsys.readouterr()
    assert run_cli([*argv, "num_updates=3"]) == 2
    assert "linear learning-rate schedule depends on the run length" in capsys.readouterr().err
    # with a constant schedule, 2 updates then 3 more equal 5 straight away
    grown = tmp_path / "grown"
    assert run_cli(ppo_argv(grown, tiny_policy, data_dir, "num_updates=2", "lr_schedule=constant")) == 0
    assert run_cli(ppo_argv(grown, tiny_policy, data_dir, "num_updates=5", "lr_schedule=constant")) == 0
    straight = tmp_path / "straight"
    assert run_cli(ppo_argv(straight, tiny_policy, data_dir, "num_updates=5", "lr_schedule=constant")) == 0
    assert outcome("ppo", grown) == outcome("ppo", straight)


def test_corrupt_latest_checkpoint_falls_back(tiny_policy, data_dir, tmp_path, reference, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir)
    run_killed(argv, "after-update:5")  # checkpoints at updates 2 and 4
    newest = out / "checkpoints" / "update-000004"
    weights = newest / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    # naming the corrupt checkpoint: one line, offering the good one
    assert run_cli([*argv, f"resume={newest}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "truncated or corrupt" in lines[0] and "update-000002" in lines[0], lines
    # auto: one warning line, then it resumes from update 2 and ends as if nothing had happened
    assert run_cli(argv) == 0
    err = capsys.readouterr().err
    assert "warning: skipping an unusable checkpoint" in err and "update-000002" in err
    assert outcome("ppo", out) == reference("ppo")


def test_no_good_checkpoint_fails_in_one_line(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = sft_argv(out, tiny_policy, data_dir)
    run_killed(argv, "after-step:3")  # one checkpoint, at step 2
    (out / "checkpoints" / "step-000002" / "state.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert run_cli(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "step-000002" in lines[0] and "no earlier good checkpoint" in lines[0]


def test_no_resume_refuses_an_existing_run(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = rm_argv(out, tiny_policy, data_dir, "num_epochs=1")
    assert run_cli(argv) == 0
    capsys.readouterr()
    assert run_cli([*argv, "--no-resume"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli([*rm_argv(tmp_path / "new", tiny_policy, data_dir, "num_epochs=1"), "--no-resume"]) == 0


def test_sigterm_checkpoints_and_exits_75(tiny_policy, data_dir, tmp_path, reference):  # noqa: F811
    """A real SIGTERM from outside, half-way through a run: the update finishes, a checkpoint is written, exit 75
    with one line saying how to resume; resuming ends exactly where an uninterrupted run does."""
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, reward="slow_brevity")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "tether", *argv], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = out / "metrics.jsonl"
    while not (log.is_file() and log.read_text().count("\n") >= 1) and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 75, err
    done = log.read_text().count("\n")
    assert 1 <= done < 5
    assert (out / "checkpoints" / f"update-{done:06d}" / "meta.json").is_file()
    last = err.strip().splitlines()[-1]
    assert last.startswith("tether: pre-empted (SIGTERM)") and "Run the same command again to resume" in last
    os.environ["TETHER_TEST_REWARD_SLEEP"] = "0"
    try:
        assert run_cli(argv) == 0
    finally:
        del os.environ["TETHER_TEST_REWARD_SLEEP"]
    noisy = outcome("ppo", out)
    assert noisy == reference("ppo")


def test_second_signal_aborts_at_once(tiny_policy, data_dir, tmp_path, reference, capsys):  # noqa: F811
    """Two SIGTERMs during update 3: the update is abandoned (exit 130), nothing half-written is left, and the run
    resumes from its last checkpoint to the same end."""
    import _reliability_rewards as rewards

    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, reward="signalling")
    rewards.reset_calls()
    rewards.SIGNAL_AT_CALL.update(call=3, times=2)
    try:
        assert run_cli(argv) == 130
    finally:
        rewards.SIGNAL_AT_CALL.clear()
    err = capsys.readouterr().err
    assert "SIGTERM received" in err and "interrupted" in err
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["latest", "update-000002"]
    assert leftovers(tmp_path) == []
    assert run_cli(argv) == 0
    assert outcome("ppo", out) == reference("ppo")


def test_one_signal_in_process_finishes_the_update(tiny_policy, data_dir, tmp_path, reference, capsys):  # noqa: F811
    import _reliability_rewards as rewards

    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, reward="signalling")
    rewards.reset_calls()
    rewards.SIGNAL_AT_CALL.update(call=1, times=1)
    try:
        assert run_cli(argv) == 75
    finally:
        rewards.SIGNAL_AT_CALL.clear()
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
    assert (out / "checkpoints" / "latest").read_text().strip() == "update-000001"
    assert run_cli(argv) == 0
    assert outcome("ppo", out) == reference("ppo")


def test_pipeline_resumes_the_interrupted_stage(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    """Killed in the RM stage, then in the PPO stage: each re-run skips the finished stages, resumes the interrupted
    one, and the pipeline ends with the policy of an uninterrupted pipeline."""
    def argv(out: Path) -> list[str]:
        return ["pipeline", f"output_dir={out}", f"sft.model={tiny_policy}", f"sft.train_file={data_dir / 'sft.jsonl'}",
                "sft.max_steps=3", "sft.batch_size=2", "sft.checkpoint_every=0", f"rm.model={tiny_policy}",
                f"rm.train_file={data_dir / 'pairs.jsonl'}", "rm.max_steps=3", "rm.batch_size=2",
                "rm.checkpoint_every=1", f"ppo.prompts={data_dir / 'prompts.jsonl'}", "ppo.num_updates=3",
                "ppo.rollout_batch_size=2", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1",
                "ppo.response_length=4", "ppo.checkpoint_every=1"]

    ref = tmp_path / "ref"
    assert run_cli(argv(ref)) == 0
    out = tmp_path / "run"
    run_killed(argv(out), "checkpoint-write:step-000002")  # in the RM stage (SFT writes only step-000003)
    run_killed(argv(out), "after-update:2")
    capsys.readouterr()
    assert run_cli(argv(out)) == 0
    said = capsys.readouterr()
    assert "[sft] skipped" in said.out and "[rm] skipped" in said.out and "resuming from" in said.err
    assert outcome("ppo", out / "ppo") == outcome("ppo", ref / "ppo")
    assert tensor_hash(out / "rm" / "model.safetensors") == tensor_hash(ref / "rm" / "model.safetensors")


def test_tensorboard_shows_one_curve_after_a_kill_and_resume(tiny_policy, data_dir, tmp_path, capsys):  # noqa: F811
    """Killed after update 3 with the newest checkpoint at update 2, the resumed process logs updates 3-5 again;
    TensorBoard must show each update once (the resumed writer purges what the killed process wrote from 3 on)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir)
    run_killed(argv, "after-update:3")
    assert len(list((out / "tb").glob("events.*"))) == 1  # the killed process did write its updates 1-3
    assert run_cli(argv) == 0, capsys.readouterr().err
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("objective/score")]
    assert steps == [1, 2, 3, 4, 5]
    scores = [json.loads(line)["objective/score"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("objective/score")] == pytest.approx(scores, rel=1e-6)


def test_wandb_and_mlflow_resume_into_the_same_run_without_duplicate_steps(tiny_policy, data_dir, tmp_path,  # noqa: F811
                                                                          monkeypatch, capsys):
    """Killed after update 3 (newest checkpoint: update 2), the resumed process re-runs update 3; W&B and MLflow
    continue the same runs (ids kept in trackers.json), no update appears twice (MLflow, written at once, has each
    update exactly once), the W&B run keeps its config."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    sys.path.insert(0, str(ROOT / "tests" / "monitor"))
    from _tracked import mlflow_metrics, wandb_run

    uri = f"file:{tmp_path / 'mlruns'}"
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    argv = ppo_argv(out, tiny_policy, data_dir, "monitor.report_to=[wandb,mlflow]", "monitor.preflight=false")
    run_killed(argv, "after-update:3")
    before = json.loads((out / "trackers.json").read_text())
    assert before["wandb"]["step"] == before["mlflow"]["step"] == 3
    assert run_cli(argv) == 0, capsys.readouterr().err
    after = json.loads((out / "trackers.json").read_text())
    assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in before.items()}
    assert after["wandb"]["step"] == after["mlflow"]["step"] == 5
    scores = [json.loads(line)["objective/score"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    wb = wandb_run(tmp_path, after["wandb"]["id"])
    assert len(list(tmp_path.glob(f"wandb/offline-run-*-{after['wandb']['id']}"))) == 2  # two processes, one run
    # W&B buffers what it is sent: a SIGKILL may lose what the killed process sent (offline: possibly all of it, its
    # config included), never double a step; the resumed process sends the config again and updates 4-5
    assert wb["configs"] and all(c == wb["configs"][0] for c in wb["configs"]) and wb["configs"][0]["lr"] > 0
    assert set(wb["names"]) == {"run"}
    assert wb["steps"] == sorted(set(wb["steps"])) and {4, 5} <= set(wb["steps"]) <= {1, 2, 3, 4, 5}
    assert [wb["history"][u]["objective/score"] for u in wb["steps"]] == pytest.approx(
        [scores[u - 1] for u in wb["steps"]], rel=1e-6)
    ml = mlflow_metrics(uri, after["mlflow"]["id"])  # the file store writes `/` as `.`
    assert [s for s, _ in ml["metrics"]["objective.score"]] == [1, 2, 3, 4, 5] and ml["name"] == "run"
    assert [v for _, v in ml["metrics"]["objective.score"]] == pytest.approx(scores, rel=1e-6)
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs([e.experiment_id for e in
                                                       MlflowClient(tracking_uri=uri).search_experiments()])
    assert [r.info.run_id for r in runs] == [after["mlflow"]["id"]]
