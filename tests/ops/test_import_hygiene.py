"""tether.ops is pure tensor math: importing it must not pull in the heavy model/data stacks (aesthetics.md §4.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_ops_imports_without_transformers_accelerate_datasets():
    code = (
        "import sys, tether.ops\n"
        "heavy = [m for m in ('transformers', 'accelerate', 'datasets') if m in sys.modules]\n"
        "assert not heavy, f'tether.ops imported {heavy}'\n"
        "assert 'torch' in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
