"""Bad inputs through the CLI, table-driven, across config, data, tokenizer, model, reward and checkpoints: each gives
exactly one ``tether: error:`` line (no traceback), the documented exit code, and leaves no partial file behind —
the output directory is not even created when the input is refused before training, and an existing run directory
is left exactly as it was. (tests/cli/test_cli.py has the first table of bad inputs; none is repeated here.)"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from _reliability import (
    data_dir,  # noqa: F401  (fixture)
    leftovers,
    ppo_argv,
    rm_argv,
    run_cli,
    sft_argv,
    tiny_policy,  # noqa: F401  (fixture)
)


@dataclass
class Env:
    tmp: Path
    policy: Path
    data: Path
    finished_sft: Path
    ppo_run: Path

    def file(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text, encoding="utf-8")
        return p

    def jsonl(self, name: str, rows: list) -> Path:
        return self.file(name, "".join(json.dumps(r) + "\n" for r in rows))

    def model_copy(self, name: str, edit: Callable[[Path], None]) -> Path:
        d = self.tmp / name
        shutil.copytree(self.policy, d)
        edit(d)
        return d


@dataclass
class Case:
    argv: Callable[[Env, Path], list[str]]
    """The command line, given the environment and the output directory to use."""
    expect: str
    """Text the error line must contain."""
    code: int = 2
    existing: Optional[str] = None
    """``sft``/``ppo``: the output directory is a copy of an earlier run (which must be left unchanged)."""
    writes: bool = False
    """The error comes after training began: complete files may exist, temporaries may not."""


def _json_edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _ppo(env: Env, out: Path, *extra: str, reward: str = "noisy_brevity") -> list[str]:
    return ppo_argv(out, env.policy, env.data, "num_updates=2", *extra, reward=reward)


def _sft(env: Env, out: Path, *extra: str, train: Optional[Path] = None) -> list[str]:
    argv = sft_argv(out, env.policy, env.data, "num_epochs=1", *extra)
    return [a if not a.startswith("train_file=") or train is None else f"train_file={train}" for a in argv]


def _rm(env: Env, out: Path, *extra: str, train: Optional[Path] = None) -> list[str]:
    argv = rm_argv(out, env.policy, env.data, "num_epochs=1", *extra)
    return [a if not a.startswith("train_file=") or train is None else f"train_file={train}" for a in argv]


def _small_vocab(d: Path) -> None:
    """The model directory holds a 1000-token model next to the GPT-2 tokenizer."""
    from conftest import tiny_llama

    tiny_llama(1000).save_pretrained(d)


def _other_stage_checkpoint(env: Env, out: Path) -> list[str]:
    ckpt = sorted((env.finished_sft / "checkpoints").glob("step-*"))[-1]
    return _ppo(env, out, f"resume={ckpt}")


def _future_format(env: Env, out: Path) -> list[str]:
    ckpt = sorted((out / "checkpoints").glob("update-*"))[-1]
    _json_edit(ckpt / "meta.json", format_version=99)
    return _ppo(env, out, f"resume={ckpt}")


_LONG_ON_LINE_4 = '{"prompt": "Hi"}\n\n{"prompt": "My cat"}\n{"prompt": "one two three four five six seven"}\n'
"""A prompt file whose too-long prompt is on line 4 (after a blank line): the error must name that line."""

CASES: dict[str, Case] = {
    # --- config: ranges, cross-field rules, resume options
    "checkpoint_every < 0": Case(lambda e, o: _ppo(e, o, "checkpoint_every=-1"), "checkpoint_every"),
    "keep_checkpoints 0": Case(lambda e, o: _sft(e, o, "keep_checkpoints=0"), "keep_checkpoints"),
    "max_consecutive_skips 0": Case(lambda e, o: _rm(e, o, "max_consecutive_skips=0"), "max_consecutive_skips"),
    "empty resume": Case(lambda e, o: _ppo(e, o, "resume="), "resume: must be auto, never, or the path"),
    "resume path missing": Case(lambda e, o: _sft(e, o, f"resume={e.tmp / 'nowhere'}"), "checkpoint not found"),
    "response_length 0": Case(lambda e, o: _ppo(e, o, "response_length=0"), "response_length"),
    "warm-up as long as the run": Case(lambda e, o: _ppo(e, o, "warmup_updates=2"),
                                       "warmup_updates=2 must be < num_updates=2"),
    "micro batch does not divide": Case(lambda e, o: _ppo(e, o, "micro_batch_size=3"),
                                        "micro_batch_size=3 must divide the minibatch size 2"),
    "sft warm-up beyond the data": Case(lambda e, o: _sft(e, o, "warmup_steps=40"),
                                        "warmup_steps=40 must be < the 5 optimizer steps"),
    "sft eval file = train file": Case(lambda e, o: _sft(e, o, f"eval_file={e.data / 'sft.jsonl'}",
                                                         "eval_fraction=0"), "eval_file is the training file"),
    "rm normalize_file without normalize": Case(lambda e, o: _rm(e, o, "normalize=none", "normalize_file=x.jsonl"),
                                                "normalize_file is set but normalize is 'none'"),
    "rm margin = group column": Case(lambda e, o: _rm(e, o, "margin_column=group"), "name the same column"),
    "sft output_dir = model": Case(lambda e, o: [a if not a.startswith("output_dir=") else f"output_dir={e.policy}"
                                                 for a in _sft(e, o)], "output_dir is the input model directory"),
    "pipeline --resume PATH": Case(lambda e, o: ["pipeline", "--resume", str(e.tmp), f"output_dir={o}"],
                                   "runs several stages"),
    "--resume with --no-resume": Case(lambda e, o: [*_sft(e, o), "--resume", "auto", "--no-resume"],
                                      "not allowed with argument"),
    # --- data
    "sft train file missing": Case(lambda e, o: _sft(e, o, train=e.tmp / "missing.jsonl"), "file not found"),
    "sft record without completion": Case(lambda e, o: _sft(e, o, train=e.jsonl("a.jsonl", [{"prompt": "Hi"}])),
                                          "missing column"),
    "sft invalid JSON line": Case(lambda e, o: _sft(e, o, train=e.file("b.jsonl", '{"prompt": "a", "completion"\n')),
                                  "line 1: invalid JSON"),
    "sft completion not a string": Case(lambda e, o: _sft(e, o, train=e.jsonl("c.jsonl", [
        {"prompt": "Hi", "completion": 3}])), "'completion' must be a string or a list of messages, got int"),
    "sft nothing left to learn": Case(lambda e, o: _sft(e, o, "max_length=8", "eval_fraction=0", train=e.jsonl(
        "d.jsonl", [{"prompt": "one two three four five six seven eight nine ten", "completion": " eleven"}])),
        "no example keeps a target token within max_length=8"),
    "rm chosen = rejected": Case(lambda e, o: _rm(e, o, train=e.jsonl("e.jsonl", [
        {"prompt": "p", "chosen": "same", "rejected": "same"}] * 4)), "chosen"),
    "rm pair without rejected": Case(lambda e, o: _rm(e, o, train=e.jsonl("f.jsonl", [
        {"prompt": "p", "chosen": "a"}] * 4)), "missing column 'rejected'"),
    "rm margin not a number": Case(lambda e, o: _rm(e, o, "margin_column=m", train=e.jsonl("g.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b", "m": "big"}] * 4)), "'m' must be a number"),
    "rm CSV row of the wrong width": Case(lambda e, o: _rm(e, o, train=e.file(
        "h.csv", "prompt,chosen,rejected\np,a,b\np,a\n")), "h.csv row 2: missing column 'rejected'"),
    "ppo prompt file without records": Case(lambda e, o: [a if not a.startswith("prompts=") else
                                                          f"prompts={e.file('i.jsonl', '')}" for a in _ppo(e, o)],
                                            "no records"),
    "ppo prompt too long (error)": Case(lambda e, o: _ppo(e, o, "max_prompt_length=2", "prompt_truncation=error"),
                                        "more than max_prompt_length=2 (prompt_truncation=error)"),
    "ppo prompt too long names its file line": Case(lambda e, o: [a if not a.startswith("prompts=") else
                                                      f"prompts={e.file('k.jsonl', _LONG_ON_LINE_4)}"
                                                      for a in _ppo(e, o, "max_prompt_length=4",
                                                                    "prompt_truncation=error")],
                                                "k.jsonl line 4: the prompt has 7 tokens, more than "
                                                "max_prompt_length=4"),
    "ppo output_dir is a file": Case(lambda e, o: [a if not a.startswith("output_dir=") else
                                                   f"output_dir={e.file('plain', 'x')}" for a in _ppo(e, o)],
                                     "plain exists and is not a directory"),
    "sft output_dir inside a file": Case(lambda e, o: [a if not a.startswith("output_dir=") else
                                                       f"output_dir={e.file('plain2', 'x') / 'sft'}"
                                                       for a in _sft(e, o)], "plain2 is a file"),
    "ppo whiten_rewards with RLOO": Case(lambda e, o: _ppo(e, o, "advantage=rloo", "samples_per_prompt=2",
                                                           "whiten_rewards=true"), "whiten_rewards: only with"),
    "ppo k1 KL in the loss": Case(lambda e, o: _ppo(e, o, "kl_in=loss"), "zero expected gradient"),
    "ppo prompts in a .txt": Case(lambda e, o: [a if not a.startswith("prompts=") else
                                                f"prompts={e.file('j.txt', 'The movie')}" for a in _ppo(e, o)],
                                  "unsupported data file type '.txt'"),
    # --- tokenizer
    "no pad token, pad_policy=refuse": Case(lambda e, o: _sft(e, o, "pad_policy=refuse"),
                                            "tokenizer has no pad token"),
    "tokenizer without EOS": Case(lambda e, o: [a if not a.startswith("policy=") else "policy=" + str(e.model_copy(
        "noeos", lambda d: _json_edit(d / "tokenizer_config.json", eos_token=None, bos_token=None,
                                      unk_token=None))) for a in _ppo(e, o)], "tokenizer has no EOS token"),
    "no tokenizer files": Case(lambda e, o: [a if not a.startswith("model=") else "model=" + str(e.model_copy(
        "notok", lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")]))
        for a in _sft(e, o)], "cannot load tokenizer"),
    "tokenizer of another model": Case(lambda e, o: [a if not a.startswith("model=") else "model=" + str(
        e.model_copy("small", _small_vocab)) for a in _sft(e, o)],
        "tokenizer has 50257 tokens but the model embeds only 1000"),
    # --- model
    "model dir without config.json": Case(lambda e, o: [a if not a.startswith("model=") else "model=" + str(
        e.model_copy("nocfg", lambda d: (d / "config.json").unlink())) for a in _rm(e, o)],
        "not a save_pretrained model directory"),
    "truncated weights": Case(lambda e, o: [a if not a.startswith("policy=") else "policy=" + str(e.model_copy(
        "trunc", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000])))
        for a in _ppo(e, o)], "cannot load causal LM"),
    "reference dir missing": Case(lambda e, o: _ppo(e, o, f"reference={e.tmp / 'noref'}"), "directory not found"),
    "reward model without a score head": Case(lambda e, o: [a if not a.startswith("rewards=") else
                                                            f"rewards=[{{kind: model, path: {e.policy}}}]"
                                                            for a in _ppo(e, o)], "not a trained reward model"),
    "reward model dir missing": Case(lambda e, o: [a if not a.startswith("rewards=") else
                                                   f"rewards=[{{kind: model, path: {e.tmp / 'norm'}}}]"
                                                   for a in _ppo(e, o)], "directory not found"),
    # --- reward
    "reward of the wrong length": Case(lambda e, o: _ppo(e, o, reward="one_value"),
                                       "reward 'brevity': returned (1,) values for 4 completions"),
    "reward returns words": Case(lambda e, o: _ppo(e, o, reward="words"), "not a list of numbers"),
    "reward not callable": Case(lambda e, o: _ppo(e, o, reward="NOT_CALLABLE"), "has no function NOT_CALLABLE"),
    "reward spec without a colon": Case(lambda e, o: [a if not a.startswith("rewards=") else
                                                      "rewards=[{kind: python, path: brevity}]" for a in _ppo(e, o)],
                                        "expected 'module:function'"),
    "reward weight inf": Case(lambda e, o: [a if not a.startswith("rewards=") else
                                            "rewards=[{kind: python, path: '_reliability_rewards:words', "
                                            "weight: .inf}]" for a in _ppo(e, o)], "weight must be finite"),
    "unknown judge": Case(lambda e, o: [a if not a.startswith("rewards=") else "rewards=[{kind: judge, path: oracle}]"
                                        for a in _ppo(e, o)], "unknown judge 'oracle'"),
    "reward NaN every time": Case(lambda e, o: _ppo(e, o, "max_consecutive_skips=1", reward="always_nan"),
                                  "1 update in a row without an optimizer step", code=3, writes=True),
    # --- checkpoints and run directories
    "config changed since the checkpoint": Case(lambda e, o: _ppo(e, o, "lr=1e-3"), "lr was 0.003, now 0.001",
                                                existing="ppo"),
    "finished run, another config": Case(lambda e, o: _sft(e, o, "lr=1e-3"),
                                         "holds a finished run made with another config (lr was 0.003", existing="sft"),
    "--no-resume over a run": Case(lambda e, o: [*_ppo(e, o), "--no-resume"], "already holds a run", existing="ppo"),
    "checkpoint of another stage": Case(_other_stage_checkpoint, "a sft checkpoint, not a ppo one", existing="ppo"),
    "checkpoint format version": Case(_future_format, "checkpoint format version 99; this tether reads version 1",
                                      existing="ppo"),
}


@pytest.fixture(scope="module")
def runs(tiny_policy, data_dir, tmp_path_factory):  # noqa: F811
    """A finished SFT run and a PPO run killed after its first checkpoint, made once and copied per case."""
    from _reliability import run_killed

    base = tmp_path_factory.mktemp("runs")
    sft = base / "sft"
    assert run_cli(sft_argv(sft, tiny_policy, data_dir, "num_epochs=1")) == 0
    ppo = base / "ppo"
    run_killed(ppo_argv(ppo, tiny_policy, data_dir, "num_updates=2", "checkpoint_every=1"), "after-update:2")
    return sft, ppo


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tiny_policy, data_dir, runs, tmp_path, capsys, monkeypatch):  # noqa: F811
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    env = Env(tmp_path, tiny_policy, data_dir, runs[0], runs[1])
    out = tmp_path / "out"
    if case.existing:
        shutil.copytree(runs[0] if case.existing == "sft" else runs[1], out)
    argv = case.argv(env, out)
    before = _snapshot(out) if out.exists() else None
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("tether: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert case.expect in errors[0], errors[0]
    assert code == case.code, err
    if before is not None and name != "checkpoint format version":  # (that case edited meta.json itself)
        assert _snapshot(out) == before
    elif not case.writes and before is None:
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["ppo", "sft", "rm", "pipeline"])
def test_output_dir_that_is_a_file_fails_before_anything_runs(command, tiny_policy, data_dir, tmp_path,
                                                              capsys):  # noqa: F811
    """An output_dir that is an existing file is a validation error: one line, exit 2, and nothing printed before it
    (no stage banner), the file left as it was."""
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    argv = {"ppo": lambda: _ppo(Env(tmp_path, tiny_policy, data_dir, tmp_path, tmp_path), plain),
            "sft": lambda: sft_argv(plain, tiny_policy, data_dir),
            "rm": lambda: rm_argv(plain, tiny_policy, data_dir),
            "pipeline": lambda: ["pipeline", f"output_dir={plain}", f"sft.model={tiny_policy}",
                                 f"sft.train_file={data_dir / 'sft.jsonl'}", f"rm.model={tiny_policy}",
                                 f"rm.train_file={data_dir / 'pairs.jsonl'}",
                                 f"ppo.prompts={data_dir / 'prompts.jsonl'}"],
            }[command]()
    capsys.readouterr()
    assert run_cli(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "output_dir" in err[0] and "exists and is not a directory" in err[0], err
    assert plain.read_text() == "keep me"
