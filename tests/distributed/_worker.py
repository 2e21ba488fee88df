"""One SFT, reward-model or PPO run of the data-parallel tests, in float64 on a tiny random GPT-2 with the real
GPT-2 tokenizer: called in-process for the one-process reference, or as a script under ``torchrun`` (every process
builds the same seeded model). ``python _worker.py SPEC.json``; SPEC: ``{"stage": "sft"|"rm"|"ppo", "cfg": {...}}``.

PPO: the rollout is sampled one prompt row at a time, each row seeded from the update's rollout seed, the prompt's
tokens and the sample's number (:func:`per_row_sampling`), so which completions are drawn does not depend on how the
prompts are split over processes. This stands in for the per-prompt seeded sampler (issue 13; tether/rollout/) until
that one lands, and goes away with it."""

from __future__ import annotations

import hashlib
import json
import sys
from types import SimpleNamespace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "stages"))

from _tiny import gpt2_lm, gpt2_rm, gpt2_tok  # noqa: E402

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is", "The weather today",
           "A good friend", "In the morning I", "The best thing about"]


def space_reward(prompts, completions):
    """Deterministic toy reward: the share of characters that are spaces."""
    return [c.count(" ") / max(len(c), 1) for c in completions]


def per_row_sampling(policy, pad_id: int) -> None:
    """Make ``policy.generate`` sample each row on its own (its left pads stripped), seeded from the seed the
    caller set for the whole call (``torch.initial_seed()``: tether seeds each update's rollout), the row's prompt
    tokens and its number among equal prompts; rows are padded back into one batch as ``generate`` returns it."""
    import torch

    original = policy.generate

    def generate(input_ids, attention_mask, generation_config, **kw):
        base, seen, rows, steps = torch.initial_seed(), {}, [], []
        for i in range(input_ids.shape[0]):
            keep = attention_mask[i].bool()
            key = tuple(input_ids[i][keep].tolist())
            j = seen[key] = seen.get(key, -1) + 1
            torch.manual_seed(int(hashlib.sha256(repr((base, key, j)).encode()).hexdigest()[:15], 16))
            ids = input_ids[i : i + 1, keep]
            out = original(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation_config,
                           **kw)
            rows.append(out.sequences[0, ids.shape[1]:])
            steps.append(torch.stack(out.scores, 1)[0])  # (n_i, V)
        n = max(r.shape[0] for r in rows)
        seq = torch.full((len(rows), n), pad_id, dtype=torch.long)
        scores = torch.zeros(len(rows), n, steps[0].shape[-1], dtype=steps[0].dtype)
        for i, (r, sc) in enumerate(zip(rows, steps)):
            seq[i, : r.shape[0]], scores[i, : sc.shape[0]] = r, sc
        return SimpleNamespace(sequences=torch.cat([input_ids, seq], 1), scores=tuple(scores.unbind(1)))

    policy.generate = generate


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
        per_row_sampling(model, tok.pad_token_id)
        PPOTrainer(PPOConfig(**spec["cfg"]), policy=model, tokenizer=tok, reward=space_reward,
                   prompts=PROMPTS).train()
    else:
        raise SystemExit(f"unknown stage {spec['stage']!r}")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
