"""One SFT, reward-model or PPO run of the data-parallel tests, in float64 on a tiny random GPT-2 with the real
GPT-2 tokenizer: called in-process for the one-process reference, or as a script under ``torchrun`` (every process
builds the same seeded model). ``python _worker.py SPEC.json``; SPEC: ``{"stage": "sft"|"rm"|"ppo", "cfg": {...}}``.

PPO samples with tether's own per-row seeded sampler (``tether.rollout.sampler``: one seed per prompt index and
sample), so which completions are drawn does not depend on how the prompts are split over processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stages"))

from _tiny import gpt2_lm, gpt2_rm, gpt2_tok  # noqa: E402

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is", "The weather today",
           "A good friend", "In the morning I", "The best thing about"]


def space_reward(prompts, completions):
    """Deterministic toy reward: the share of characters that are spaces."""
    return [c.count(" ") / max(len(c), 1) for c in completions]


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
    elif spec["stage"] == "ppo":
        from tether.algos.ppo_trainer import PPOTrainer
        from tether.config.ppo import PPOConfig

        tok.add_special_tokens({"pad_token": "<|pad|>"})
        model = gpt2_lm(len(tok), seed=3).double()
        PPOTrainer(PPOConfig(**spec["cfg"]), policy=model, tokenizer=tok, reward=space_reward,
                   prompts=PROMPTS).train()
    else:
        raise SystemExit(f"unknown stage {spec['stage']!r}")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
