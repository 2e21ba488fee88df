"""`report_to` trackers (TensorBoard, W&B, MLflow, trackio through accelerate's trackers), all offline in temporary
directories: a tiny SFT run logs the same metric keys and steps as its metrics.jsonl, names the tracker run after the
output directory and logs the config once; `report_to` parsing and validation. Kill-and-resume into the same W&B and
MLflow runs: tests/reliability/test_resume.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from _tiny import gpt2_lm, gpt2_tok, toy_sft, write_jsonl  # noqa: E402
from _tracked import mlflow_metrics, trackio_logs, wandb_run  # noqa: E402

from tether.config.monitor import MonitorConfig  # noqa: E402
from tether.config.sft import SFTConfig  # noqa: E402
from tether.errors import ConfigError  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Every tracker offline and local, under tmp_path."""
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_SILENT": "true",
           "WANDB_PROJECT": "tether-tests", "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
           "MLFLOW_ALLOW_FILE_STORE": "true", "TRACKIO_DIR": str(tmp_path / "trackio")}
    (tmp_path / "wandb-dir").mkdir()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return env


def logged_by_step(metrics_file: Path) -> dict[int, dict[str, float]]:
    """What every tracker must have: per step, each finite number of metrics.jsonl but the step itself."""
    out: dict[int, dict[str, float]] = {}
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(
            {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
             and math.isfinite(v)})
    return out


def _sft(tmp_path, report_to, name="sft-run"):
    from tether.algos.sft import train_sft

    tok = gpt2_tok()
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(12))
    cfg = SFTConfig(output_dir=str(tmp_path / name), train_file=str(train), eval_fraction=0.0, batch_size=2,
                    num_epochs=1, log_every=2, max_length=32, report_to=report_to)
    res = train_sft(cfg, model=gpt2_lm(len(tok) + 1), tokenizer=tok, progress=False)
    expected = logged_by_step(res.output_dir / "metrics.jsonl")
    assert sorted(expected) == [2, 4, 6] and "loss" in expected[2]
    return res.output_dir, expected


def _same(got: dict[int, dict], expected: dict[int, dict]) -> None:
    assert sorted(got) == sorted(expected)
    for step, values in expected.items():
        assert set(got[step]) == set(values), step
        assert got[step] == pytest.approx(values, rel=1e-6), step


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_each_tracker_logs_what_metrics_jsonl_has(tmp_path, offline, tracker):
    pytest.importorskip({"mlflow": "mlflow"}.get(tracker, tracker))
    out, expected = _sft(tmp_path, [tracker])
    state = json.loads((out / "trackers.json").read_text()) if tracker != "tensorboard" else {}
    if tracker == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tb"))
        acc.Reload()
        got: dict[int, dict] = {}
        for key in acc.Tags()["scalars"]:
            for e in acc.Scalars(key):
                got.setdefault(e.step, {})[key] = e.value
        _same(got, expected)
        hparams = list((out / "tb").rglob("hparams.yml"))  # the config, once (and as TensorBoard hparams)
        assert len(hparams) == 1 and "lr: 2.0e-05" in hparams[0].read_text()
    elif tracker == "wandb":
        run = wandb_run(Path(offline["WANDB_DIR"]), state["wandb"]["id"])
        _same(run["history"], expected)
        assert run["names"] == ["sft-run"] and len(run["configs"]) == 1 and run["configs"][0]["lr"] == 2e-5
        assert not (out / "wandb").exists()  # WANDB_DIR honoured
    elif tracker == "mlflow":
        run = mlflow_metrics(offline["MLFLOW_TRACKING_URI"], state["mlflow"]["id"])
        got = {}
        for key, points in run["metrics"].items():
            for step, value in points:
                got.setdefault(step, {})[key] = value
        expected = {s: {k.replace("/", "."): v for k, v in vals.items()} for s, vals in expected.items()}
        _same(got, expected)
        assert run["name"] == "sft-run" and run["params"]["lr"] == "2e-05" and run["params"]["report_to"] == '["mlflow"]'
    else:
        rows = trackio_logs(Path(offline["TRACKIO_DIR"]), "tether", "sft-run")
        _same({r["step"]: json.loads(r["metrics"]) for r in rows}, expected)
    assert state.get(tracker, {}).get("step", 6) == 6


def test_several_trackers_at_once_and_none(tmp_path, offline):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    out, expected = _sft(tmp_path, ["tensorboard", "wandb", "mlflow"])
    state = json.loads((out / "trackers.json").read_text())
    assert set(state) == {"wandb", "mlflow"} and (out / "tb").is_dir()
    _same(wandb_run(Path(offline["WANDB_DIR"]), state["wandb"]["id"])["history"], expected)
    quiet, _ = _sft(tmp_path, ["none"], name="quiet")
    assert not (quiet / "tb").exists() and not (quiet / "trackers.json").exists()


def test_report_to_parsing_and_validation():
    assert SFTConfig(train_file="x.jsonl", report_to="wandb,mlflow").report_to == ["wandb", "mlflow"]
    assert SFTConfig(train_file="x.jsonl").report_to == ["tensorboard"]
    assert MonitorConfig(report_to="none").trackers() == []
    assert MonitorConfig(tensorboard=False).trackers() == []
    assert MonitorConfig(report_to=["mlflow"], wandb=True).trackers() == ["mlflow", "wandb"]
    from tether.config.base import build

    for bad, why in ((["tensorboard", "none"], "none"), (["wandb", "wandb"], "twice"), (["comet"], "comet")):
        with pytest.raises(ConfigError, match=why):
            build(SFTConfig, {"train_file": "x.jsonl", "report_to": bad})


def test_a_missing_tracker_stops_the_cli_before_training_with_exit_2(tmp_path, monkeypatch, capsys):
    from tether.cli import main

    from tether.algos import sft as sft_mod

    tok = gpt2_tok()
    gpt2_lm(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", toy_sft(4))

    def never(*a, **k):
        raise AssertionError("the model was loaded before the tracker check")

    monkeypatch.setattr(sft_mod, "load_causal_lm", never)
    monkeypatch.setitem(sys.modules, "wandb", None)
    capsys.readouterr()
    code = main(["sft", f"model={tmp_path / 'model'}", f"train_file={train}", f"output_dir={tmp_path / 'o'}",
                 "report_to=wandb"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "report_to: wandb needs the `wandb` package" in err
    assert "tether[trackers]" in err and not (tmp_path / "o").exists()


def test_wandb_start_waits_while_a_killed_process_still_holds_the_run(monkeypatch):
    """A resume right after a SIGKILL can find the run id still held by the killed process's W&B service: the start
    is retried until it is free, and fails with one line (ConfigError) when it never is; other errors pass through."""
    import time

    from tether.errors import ConfigError
    from tether.monitor import trackers as T

    class Busy:
        init_kwargs = {"id": "abc123"}

        def __init__(self, busy_for: int):
            self.calls, self.busy_for = 0, busy_for

        def start(self):
            self.calls += 1
            if self.calls <= self.busy_for:
                raise RuntimeError("run ID abc123 is in use")

    monkeypatch.setattr(time, "sleep", lambda s: None)
    t = Busy(2)
    T._start("wandb", t)
    assert t.calls == 3
    monkeypatch.setattr(T, "WANDB_BUSY_WAIT_S", -1.0)
    with pytest.raises(ConfigError, match="W&B still holds run abc123"):
        T._start("wandb", Busy(10))
    with pytest.raises(RuntimeError, match="in use"):
        T._start("mlflow", Busy(1))  # only W&B is retried
