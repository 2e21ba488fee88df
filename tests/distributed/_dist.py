"""Helpers of the multi-process tests: start N processes with ``torchrun`` on the CPU (gloo), compare saved weights.

Every test module here sets ``pytestmark = pytest.mark.xdist_group("distributed")``, so ``make test``
(``--dist loadgroup``) never runs two of these multi-process tests at once on a 2-core machine. (No conftest.py
here: it would shadow tests/conftest.py for the helpers that import from it.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stages"))


def torchrun(args: list[str], nproc: int = 2, timeout: float = 180, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` with one thread per process; fails the test (with the
    processes' output) on a non-zero exit when ``check``."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TETHER_DIST_TIMEOUT_S": "60", **(env or {})}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"torchrun exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_worker(spec: dict, tmp: Path, nproc: int) -> None:
    """The SFT/RM run of ``_worker.py`` in this process (``nproc`` 1) or under torchrun."""
    if nproc == 1:
        from _worker import run

        torch.set_num_threads(1)
        run(spec)
        return
    file = tmp / f"spec-{nproc}.json"
    file.write_text(json.dumps(spec), encoding="utf-8")
    torchrun([str(HERE / "_worker.py"), str(file)], nproc=nproc)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-6) -> float:
    """Every tensor equal to ``rtol`` relative to its largest entry; returns the largest relative difference."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        scale = float(a[k].abs().max()) or 1.0
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    assert worst <= rtol, f"weights differ by {worst:.3g} relative"
    return worst


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
