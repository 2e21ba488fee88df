"""Shared pieces of the reliability tests: a tiny random Llama saved with the real GPT-2 tokenizer, toy data files,
and helpers that run the CLI in-process or in a child killed at a named point, and compare finished runs bit for bit.
Test modules import the fixtures from here."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _reliability_rewards for in-process runs and forked children


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, _gpt2_tokenizer_proto):
    """A tiny random Llama (vocab = GPT-2 + 1 for the pad token) saved with the real GPT-2 tokenizer."""
    from conftest import tiny_llama

    tok = copy.deepcopy(_gpt2_tokenizer_proto)
    d = tmp_path_factory.mktemp("policy")
    tiny_llama(len(tok) + 1).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """prompts.jsonl, sft.jsonl (24 prompt/completion records) and pairs.jsonl (20 preference pairs)."""
    sys.path.insert(0, str(HERE.parent / "stages"))
    from _tiny import toy_pairs, toy_sft, write_jsonl

    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "prompts.jsonl", [{"prompt": t} for t in ["The movie was", "I think that", "Today the",
                                                              "Why is it", "My cat", "A good day"]])
    write_jsonl(d / "sft.jsonl", toy_sft(24))
    write_jsonl(d / "pairs.jsonl", toy_pairs(20))
    return d


def ppo_argv(out: Path, policy: Path, data: Path, *extra: str, reward: str = "noisy_brevity") -> list[str]:
    """A tiny PPO run: 5 updates, a critic, an adaptive β, two minibatches, checkpoints every 2 updates."""
    return ["ppo", f"policy={policy}", f"prompts={data / 'prompts.jsonl'}", f"output_dir={out}",
            f"rewards=[{{kind: python, path: '_reliability_rewards:{reward}', name: brevity}}]", "num_updates=5",
            "rollout_batch_size=4", "num_minibatches=2", "micro_batch_size=1", "num_ppo_epochs=2",
            "response_length=5", "kl_controller=adaptive", "kl_target=0.001", "kl_horizon=50", "lr=3e-3",
            "critic_lr=3e-3", "checkpoint_every=2", "sample_every=1", "progress=false", *extra]


def sft_argv(out: Path, policy: Path, data: Path, *extra: str) -> list[str]:
    """A tiny SFT run: 2 epochs × 5 steps (2 micro-batches of 2 each), eval every 3, checkpoints every 2."""
    return ["sft", f"model={policy}", f"train_file={data / 'sft.jsonl'}", f"output_dir={out}", "batch_size=2",
            "grad_accum=2", "num_epochs=2", "eval_fraction=0.2", "eval_every=3", "log_every=1", "max_length=32",
            "lr=3e-3", "checkpoint_every=2", *extra]


def rm_argv(out: Path, policy: Path, data: Path, *extra: str) -> list[str]:
    """A tiny decoder reward model: 2 epochs × 8 steps, checkpoints every 3, shift_scale normalisation."""
    return ["rm", f"model={policy}", f"train_file={data / 'pairs.jsonl'}", f"output_dir={out}", "batch_size=2",
            "num_epochs=2", "eval_fraction=0.2", "log_every=1", "max_length=32", "lr=3e-3", "checkpoint_every=3",
            "normalize=shift_scale", *extra]


def dpo_argv(out: Path, policy: Path, data: Path, *extra: str) -> list[str]:
    """A tiny DPO run: 2 epochs × 4 steps of 4 pairs, held-out eval every 3 steps (best/), checkpoints every 3."""
    return ["dpo", f"model={policy}", f"train_file={data / 'pairs.jsonl'}", f"output_dir={out}", "batch_size=4",
            "num_epochs=2", "eval_fraction=0.2", "eval_every=3", "log_every=1", "max_length=32", "lr=3e-3",
            "checkpoint_every=3", *extra]


def run_cli(argv: list[str]) -> int:
    from tether.cli import main

    return main(list(argv))


def run_killed(argv: list[str], kill_at: str) -> None:
    """Run the CLI in a fresh child interpreter that SIGKILLs itself at the named point
    (``tether.engine.checkpoint.kill_point``); fail unless it really died there. A fresh interpreter rather than ``os.fork``:
    a fork of a process whose threads (torch's pools, TensorBoard writers of earlier tests) hold locks can hang."""
    import subprocess

    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from tether.cli import main; "
            "sys.exit(main(json.loads(sys.argv[2])))")
    env = {**os.environ, "TETHER_TEST_KILL_AT": kill_at}
    proc = subprocess.run([sys.executable, "-c", code, str(HERE), json.dumps(list(argv))], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (
        f"the child was not killed at {kill_at}: exit status {proc.returncode}\n{proc.stderr.decode()[-2000:]}")


def tensor_hash(*files: Path) -> str:
    """SHA-256 over the tensors (names, dtypes, shapes, bytes) of safetensors files."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for f in files:
        tensors = load_file(str(f))
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(f"{f.name}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metrics(path: Path) -> list[dict]:
    """metrics.jsonl without the timing keys (time/…, perf/…), which legitimately differ between runs."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def leftovers(root: Path) -> list[str]:
    """Temporary files or directories anywhere under ``root`` (what an interrupted write would leave)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)
