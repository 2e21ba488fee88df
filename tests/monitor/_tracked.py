"""Reading back what the trackers stored offline, for the tracker tests: a W&B offline run file (its record log
read with wandb's own protobuf classes), an MLflow file store (``MlflowClient``) and trackio's local database."""

from __future__ import annotations

import glob
import json
import sqlite3
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7  # the W&B transaction log: LevelDB-style 32 KiB blocks, 7-byte record headers


def wandb_records(path: Path) -> list:
    """Every ``Record`` protobuf of a ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, chunks = [], 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(chunks)
            out.append(rec)
            chunks = b""
    return out


def wandb_run(wandb_dir: Path, run_id: str) -> dict:
    """``{"history": {step: {key: value}}, "config": [...], "names": [...]}`` over every offline run file of
    ``run_id`` under ``wandb_dir`` (a resumed run writes a second file under the same id)."""
    history: dict[int, dict] = {}
    steps: list[int] = []
    configs, names = [], []
    for f in sorted(glob.glob(str(Path(wandb_dir) / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))):
        for rec in wandb_records(Path(f)):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
                step = int(row.get("_step", rec.history.step.num))
                steps.append(step)
                history.setdefault(step, {}).update({k: v for k, v in row.items() if not k.startswith("_")})
            elif kind == "config":
                configs.append({i.key: json.loads(i.value_json) for i in rec.config.update if not i.key.startswith("_")})
            elif kind == "run":
                names.append(rec.run.display_name)
    return {"history": history, "steps": steps, "configs": [c for c in configs if c], "names": names}


def mlflow_metrics(uri: str, run_id: str) -> dict:
    """``{key: [(step, value), ...]}`` of an MLflow run, and its params and name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
    return {"metrics": hist, "params": dict(run.data.params), "name": run.info.run_name}


def trackio_logs(trackio_dir: Path, project: str, run: str) -> list[dict]:
    """The rows trackio stored for ``run`` of ``project`` (its local SQLite database)."""
    con = sqlite3.connect(str(Path(trackio_dir) / f"{project}.db"))
    con.row_factory = sqlite3.Row
    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    assert "metrics" in tables, tables
    rows = [dict(r) for r in con.execute("select * from metrics where run_name = ? order by step", (run,))]
    return rows
