"""Sharded training (``sharding: fsdp``, torch FSDP2) on 2 gloo processes on the CPU: the same update as 1 process
with the whole batch (float64, weights to 1e-6 relative, logged loss and gradient norm too), one process without
rows in a micro-batch included; the saved files are those of an unsharded run; a run killed after its checkpoint
and resumed ends as the uninterrupted one; what tether does not read is refused in one line."""

from __future__ import annotations

import json
import sys

import pytest
from _dist import HERE, assert_weights_close, load_weights, records, run_worker, torchrun

from _tiny import gpt2_lm, gpt2_tok, toy_sft, write_jsonl

sys.path.insert(0, str(HERE.parent / "reliability"))
from _reliability import data_dir, dpo_argv, ppo_argv, rm_argv, run_cli, sft_argv, tiny_policy  # noqa: E402,F401

pytestmark = pytest.mark.xdist_group("distributed")

# 13 rows, 3 per micro-batch, 2 micro-batches a step: the last micro-batch has 1 row, so one process has none there
SFT = {"batch_size": 3, "grad_accum": 2, "num_epochs": 1, "eval_fraction": 0.0, "lr": 3e-2,
       "lr_schedule": "constant", "adam_eps": 1e-3, "log_every": 1, "max_length": 24, "checkpoint_every": 2,
       "device": "cpu"}


def _sft(tmp_path, out, nproc: int, env: dict | None = None, check: bool = True, **extra):
    data = write_jsonl(tmp_path / "sft.jsonl", toy_sft(13))
    spec = {"stage": "sft", "cfg": {**SFT, "train_file": str(data), "output_dir": str(out), **extra}}
    if nproc == 1 and env is None:
        run_worker(spec, tmp_path, 1)
        return None
    file = tmp_path / f"spec-{out.name}.json"
    file.write_text(json.dumps(spec), encoding="utf-8")
    return torchrun([str(HERE / "_worker.py"), str(file)], nproc=nproc, env=env, check=check)


def test_sft_sharded_on_two_processes_equals_one_process_and_resumes_exactly(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    _sft(tmp_path, one, 1)
    _sft(tmp_path, two, 2, sharding="fsdp")
    w1, w2 = load_weights(one), load_weights(two)
    assert_weights_close(w1, w2, rtol=1e-6)  # same keys (the tied head saved once), same values
    initial = gpt2_lm(len(gpt2_tok()) + 1, seed=3).double().state_dict()
    assert max(float((w1[k] - initial[k]).abs().max()) for k in w1) > 1e-3  # training moved the weights
    r1, r2 = records(one), records(two)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [1, 2, 3]
    for a, b in zip(r1, r2):
        for k in ("loss", "grad_norm", "tokens", "lr"):
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    # the checkpoint of step 2 holds the whole model and AdamW state, as an unsharded run's does
    ck1, ck2 = one / "checkpoints" / "step-000002", two / "checkpoints" / "step-000002"
    assert_weights_close(load_weights_file(ck1 / "model.safetensors"), load_weights_file(ck2 / "model.safetensors"))
    assert sorted(p.name for p in ck1.iterdir()) == sorted(p.name for p in ck2.iterdir())
    # killed after step 3 (the newest checkpoint is step 2's), then the same command: the uninterrupted weights
    proc = _sft(tmp_path, killed, 2, env={"TETHER_TEST_KILL_AT": "after-step:3"}, check=False, sharding="fsdp")
    assert proc.returncode != 0 and not (killed / "model.safetensors").exists()
    _sft(tmp_path, killed, 2, sharding="fsdp")
    assert_weights_close(w2, load_weights(killed), rtol=1e-12)
    assert [r["loss"] for r in records(killed)] == [r["loss"] for r in r2]


def load_weights_file(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_rm_sharded_on_two_processes_equals_one_process(tmp_path):
    """A decoder reward model (GPT-2 backbone sharded, its score head and final norm whole on each process),
    normalised with a shift folded into the final norm: as on one process."""
    from _tiny import toy_pairs

    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(10))
    # 10 pairs, 3 per micro-batch: the last micro-batch has 1 pair, so one process has none in that step
    cfg = {"train_file": str(data), "batch_size": 3, "grad_accum": 1, "num_epochs": 1, "eval_fraction": 0.0,
           "lr": 3e-2, "lr_schedule": "constant", "adam_eps": 1e-3, "log_every": 1, "max_length": 24,
           "checkpoint_every": 2, "normalize": "shift", "max_grad_norm": 0.5, "device": "cpu"}
    one, two = tmp_path / "one", tmp_path / "two"
    run_worker({"stage": "rm", "cfg": {**cfg, "output_dir": str(one)}}, tmp_path, 1)
    run_worker({"stage": "rm", "cfg": {**cfg, "output_dir": str(two), "sharding": "fsdp"}}, tmp_path, 2)
    assert_weights_close(load_weights(one), load_weights(two), rtol=1e-6)
    r1, r2 = records(one), records(two)
    assert len(r1) == len(r2) == 5  # 4 steps and the normalisation record
    for a, b in zip(r1[:4], r2[:4]):
        for k in ("loss", "accuracy", "margin", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    assert max(r["grad_norm"] for r in r1[:4]) > 0.5  # the clip acted
    n1, n2 = r1[4]["normalization"], r2[4]["normalization"]
    assert n2["folded_into"] == n1["folded_into"] and n2["mean"] == pytest.approx(n1["mean"], rel=1e-6)
    assert abs(n2["mean_after"]) < 1e-6


def _cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert run_cli(argv) != 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tether: error:"), lines
    return lines[0]


@pytest.mark.parametrize("stage,env,line", [
    ("sft", "ACCELERATE_USE_DEEPSPEED", "accelerate config: DeepSpeed is not supported by tether"),
    ("rm", "ACCELERATE_USE_FSDP", "distributed_type FSDP is not read by tether; set sharding=fsdp"),
    ("ppo", "ACCELERATE_USE_FSDP", "distributed_type FSDP is not read by tether; PPO does not shard yet"),
], ids=["deepspeed", "accelerate_fsdp", "accelerate_fsdp_ppo"])
def test_accelerate_configs_tether_does_not_read_are_refused_in_one_line(tmp_path, capsys, monkeypatch, tiny_policy,
                                                                          data_dir, stage, env, line):
    out = tmp_path / "run"
    argv = {"sft": sft_argv, "rm": rm_argv, "ppo": ppo_argv}[stage](out, tiny_policy, data_dir)
    monkeypatch.setenv(env, "true")
    assert line in _cli_error(capsys, argv)
    assert not out.exists() or not any(out.iterdir())  # refused before anything is written


def test_dpo_refuses_sharding_in_one_line(tmp_path, capsys, tiny_policy, data_dir):
    out = tmp_path / "run"
    line = _cli_error(capsys, [*dpo_argv(out, tiny_policy, data_dir), "sharding=fsdp"])
    assert "sharding=fsdp: DPO runs on one process only" in line
    assert not out.exists()


def test_sharding_on_one_process_has_no_effect(tmp_path, capsys):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    _sft(tmp_path, plain, 1, max_steps=2)
    capsys.readouterr()
    _sft(tmp_path, sharded, 1, max_steps=2, sharding="fsdp")
    assert "sharding=fsdp: one process, nothing to shard over" in capsys.readouterr().err
    a, b = load_weights(plain), load_weights(sharded)
    assert all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.parametrize("recipe,extra", [("ddp", ()), ("fsdp", ("sharding=fsdp",))], ids=["ddp", "fsdp"])
def test_accelerate_recipes_launch_two_processes_that_train_as_one(tmp_path, tiny_policy, data_dir, recipe, extra):
    """The launch line of configs/accelerate/<recipe>.yaml (with device=cpu: gloo) gives, in float32, the weights
    of one process to float reduction order."""
    import os
    import subprocess

    root = HERE.parents[1]
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["max_steps=2", "batch_size=4", "grad_accum=1", "num_epochs=1", "eval_fraction=0", "eval_every=null",
              "lr=3e-3", "device=cpu", *extra]
    assert run_cli([*sft_argv(one, tiny_policy, data_dir), *common]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "TETHER_DIST_TIMEOUT_S": "60"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / f"{recipe}.yaml"), "-m", "tether",
           *sft_argv(two, tiny_policy, data_dir), *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("[sft] done") == 1  # one summary
    assert "nothing to shard over" not in proc.stderr  # several processes (fsdp on one process says so)
    assert_weights_close(load_weights(one), load_weights(two), rtol=1e-4)
    assert len(records(two)) == len(records(one)) == 2


def test_the_fsdp_recipe_starts_the_processes_as_the_ddp_one_does():
    """configs/accelerate/fsdp.yaml sets what ddp.yaml sets (tether shards through its own option), and neither asks
    accelerate for FSDP or DeepSpeed, which tether refuses."""
    import yaml

    folder = HERE.parents[1] / "configs" / "accelerate"
    ddp, fsdp = (yaml.safe_load((folder / f"{n}.yaml").read_text()) for n in ("ddp", "fsdp"))
    assert ddp == fsdp and ddp["distributed_type"] == "MULTI_GPU" and "fsdp_config" not in ddp
    assert sorted(p.name for p in folder.iterdir()) == ["ddp.yaml", "fsdp.yaml"]  # no DeepSpeed recipe
    for n in ("ddp", "fsdp"):
        text = (folder / f"{n}.yaml").read_text()
        assert f"accelerate launch --config_file configs/accelerate/{n}.yaml -m tether sft" in text
    assert "sharding=fsdp" in (folder / "fsdp.yaml").read_text()


def test_changing_sharding_on_resume_is_refused_in_one_line(tmp_path, capsys, tiny_policy, data_dir):
    out = tmp_path / "run"
    argv = [*sft_argv(out, tiny_policy, data_dir), "max_steps=4", "checkpoint_every=1", "eval_fraction=0",
            "eval_every=null", "device=cpu"]
    import os
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "tether", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TETHER_TEST_KILL_AT": "after-step:2", "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": str(HERE.parent / "reliability")})
    assert proc.returncode != 0 and (out / "checkpoints" / "step-000001").is_dir()
    line = _cli_error(capsys, [*argv, "sharding=fsdp"])
    assert "made with another config (sharding was 'none', now 'fsdp')" in line, line
