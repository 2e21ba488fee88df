"""One SFT or reward-model run of the data-parallel tests, in float64 on a tiny random GPT-2 with the real GPT-2
tokenizer: called in-process for the one-process reference, or as a script under ``torchrun`` (every process builds
the same seeded model). ``python _worker.py SPEC.json``; SPEC: ``{"stage": "sft"|"rm", "cfg": {...}}``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stages"))

from _tiny import gpt2_lm, gpt2_rm, gpt2_tok  # noqa: E402


def run(spec: dict) -> None:
    tok = gpt2_tok()
    if spec["stage"] == "sft":
        from tether.algos.sft import train_sft
        from tether.config.sft import SFTConfig

        train_sft(SFTConfig(**spec["cfg"]), model=gpt2_lm(len(tok) + 1, seed=3).double(), tokenizer=tok,
                  progress=False)
    elif spec["stage"] == "rm":
        from tether.algos.rm import train_rm
        from tether.config.rm import RMConfig

        model = gpt2_rm(len(tok) + 1, seed=3).double()
        train_rm(RMConfig(**spec["cfg"]), model=model, tokenizer=tok, progress=False)
    else:
        raise SystemExit(f"unknown stage {spec['stage']!r}")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
