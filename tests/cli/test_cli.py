"""The ``tether`` command: shipped configs validate, overrides apply, --help is generated from the typed configs,
bad inputs give one ``tether: error:`` line (no traceback, no output directory), and tiny end-to-end runs of
``tether ppo``, ``tether pipeline`` (with the skip of finished stages) and ``tether eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.cli import main, parse_config
from tether.config.base import help_lines, load

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
COMMAND_OF = {"demo.yaml": "demo", "demo_rloo.yaml": "demo", "ppo_example.yaml": "ppo", "sft_example.yaml": "sft",
              "rm_example.yaml": "rm"}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, _gpt2_tokenizer_proto):
    """A tiny random Llama saved with the real GPT-2 tokenizer."""
    import copy

    from conftest import tiny_llama

    tok = copy.deepcopy(_gpt2_tokenizer_proto)
    model = tiny_llama(len(tok) + 1)
    d = tmp_path_factory.mktemp("policy")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def prompt_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["The movie was", "I think that", "Today", "Why"]))
    return p


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tether: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    assert path.name in COMMAND_OF, f"add {path.name} to COMMAND_OF"
    assert path.read_text().startswith("#"), "a shipped config starts with a header comment"
    cfg = parse_config(COMMAND_OF[path.name], str(path), [])
    assert cfg is not None


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= set(COMMAND_OF)


def test_overrides_apply():
    cfg = parse_config("ppo", str(ROOT / "configs/ppo_example.yaml"), ["kl_coef=0.1", "policy=/x/y", "lr=3e-5"])
    assert cfg.kl_coef == 0.1 and cfg.policy == "/x/y" and cfg.lr == 3e-5
    demo = parse_config("demo", str(ROOT / "configs/demo.yaml"), ["ppo.kl_coef=0.02", "sft.max_steps=70",
                                                                    "output_dir=runs/x"])
    assert demo.ppo.kl_coef == 0.02 and demo.sft.max_steps == 70
    assert demo.ppo.policy == demo.sft.output_dir == "runs/x/sft"          # SFT output → PPO policy
    assert demo.ppo.rewards[0].path == demo.rm.output_dir == "runs/x/rm"   # RM output → PPO reward
    assert demo.ppo.output_dir == "runs/x/ppo"


def test_demo_yaml_spells_out_the_defaults_and_rloo_is_a_named_alternative():
    """configs/demo.yaml holds exactly the built-in demo settings (real PPO: GAE with the shared-trunk critic, 2 epochs
    × 2 minibatches); configs/demo_rloo.yaml validates and is the critic-free 1 × 1 RLOO setting."""
    default = parse_config("demo", None, [])
    spelled = parse_config("demo", str(ROOT / "configs/demo.yaml"), [])
    assert spelled == default
    assert default.ppo.advantage == "gae" and default.ppo.critic_mode == "shared" and default.ppo.uses_critic
    assert default.ppo.num_ppo_epochs >= 2 and default.ppo.num_minibatches >= 2
    rloo = parse_config("demo", str(ROOT / "configs/demo_rloo.yaml"), [])
    assert rloo.ppo.advantage == "rloo" and not rloo.ppo.uses_critic and rloo.ppo.samples_per_prompt == 2
    assert rloo.ppo.num_ppo_epochs == rloo.ppo.num_minibatches == 1
    assert rloo.sft == parse_config("demo", None, ["output_dir=runs/demo-rloo"]).sft


def test_quick_preset_and_user_values():
    quick = parse_config("demo", None, ["quick=true"])
    full = parse_config("demo", None, [])
    assert quick.ppo.num_updates < full.ppo.num_updates and quick.sft.max_steps < full.sft.max_steps
    assert parse_config("demo", None, ["quick=true", "ppo.num_updates=3"]).ppo.num_updates == 3


def test_pipeline_wiring(tmp_path):
    cfg = parse_config("pipeline", None, [f"output_dir={tmp_path}", "sft.train_file=a.jsonl", "sft.model=m",
                                          "rm.train_file=p.jsonl", "rm.model=e", "ppo.prompts=q.jsonl"])
    assert cfg.ppo.policy == cfg.sft.output_dir == f"{tmp_path}/sft"
    assert cfg.ppo.rewards[0].kind == "model" and cfg.ppo.rewards[0].path == cfg.rm.output_dir


@pytest.mark.parametrize("command", ["sft", "rm", "ppo", "pipeline", "eval", "demo"])
def test_help_lists_every_option(command, capsys):
    from tether.cli import _config_classes

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    cls = _config_classes()[command][0]
    for line in help_lines(cls):
        assert " ".join(line.split()) in out, line


def test_help_shows_types_defaults_and_docs(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    out = capsys.readouterr().out
    assert "kl_coef (float, default 0.05): Initial KL coefficient" in out
    assert "advantage ({gae,grpo,dr_grpo,rloo,reinforce_pp,reinforce_pp_baseline}, default 'gae')" in out


# --------------------------------------------------------------------------------------------- bad inputs


def _bad_cases(tmp: Path, policy: Path, prompts: Path):
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("kl_coef: [1, 2\nlr: 3\n")
    empty_prompts = tmp / "empty.jsonl"
    empty_prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    ok_yaml = tmp / "ok.yaml"
    ok_yaml.write_text("lr: 1.0e-5\n")
    ok = [f"policy={policy}", f"prompts={prompts}", "rewards=[{kind: python, path: '_rewards:brevity'}]"]
    return {
        "unknown option": (["ppo", "bogus_option=1", *ok], "bogus_option: unknown option"),
        "unknown flag": (["ppo", "--frobnicate", *ok], "unrecognized arguments"),
        "unknown command": (["train-everything"], "invalid choice"),
        "bad value type": (["ppo", "num_updates=many", *ok], "num_updates"),
        "out of range": (["ppo", "kl_coef=-1", *ok], "kl_coef"),
        "bad literal": (["ppo", "advantage=ppo2", *ok], "advantage"),
        "missing config file": (["ppo", "--config", str(tmp / "nope.yaml"), *ok], "config file not found"),
        "bad yaml": (["ppo", "--config", str(bad_yaml), *ok], "invalid YAML"),
        "missing policy dir": (["ppo", f"policy={tmp / 'no-such-model'}", *ok[1:]], "directory not found"),
        "bad override syntax": (["ppo", "kl_coef", *ok], "expected KEY=VALUE"),
        "override into a scalar": (["ppo", "--config", str(ok_yaml), "lr.x=1", *ok], "not a section"),
        "divisibility": (["ppo", "rollout_batch_size=6", "num_minibatches=4", *ok], "must divide"),
        "group estimator, one sample": (["ppo", "advantage=grpo", "samples_per_prompt=1", *ok],
                                        "samples_per_prompt >= 2"),
        "empty prompt line": (["ppo", f"policy={policy}", f"prompts={empty_prompts}", ok[2]], "empty"),
        "reward not importable": (["ppo", *ok[:2], "rewards=[{kind: python, path: 'no_such_mod:f'}]"],
                                  "cannot import"),
        "no reward": (["ppo", *ok[:2]], "no reward source"),
        "pipeline wired key": (["pipeline", "sft.train_file=a", "rm.train_file=b", "ppo.policy=x"], "wired"),
        "sft missing train_file": (["sft", f"model={policy}"], "train_file: required option is missing"),
        "demo wired key": (["demo", "sft.train_file=x.jsonl"], "wired"),
        "bad device": (["sft", f"model={policy}", "train_file=x.jsonl", "device=gpu"],
                       "device: must be auto, cpu, cuda or cuda:N"),
        "cuda without a GPU (sft)": (["sft", f"model={policy}", "train_file=x.jsonl", "device=cuda"],
                                     "device=cuda: CUDA is not available"),
        "cuda without a GPU (rm)": (["rm", f"model={policy}", "train_file=x.jsonl", "device=cuda:0"],
                                    "device=cuda:0: CUDA is not available"),
        "cuda without a GPU (ppo)": (["ppo", *ok, "device=cuda"], "device=cuda: CUDA is not available"),
        "cuda without a GPU (eval)": (["eval", f"policies={{sft: {policy}}}", f"reference={policy}",
                                       f"prompts={prompts}", f"output_dir={tmp / 'eval-out'}", "device=cuda"],
                                      "device=cuda: CUDA is not available"),
        "cuda without a GPU (doctor)": (["doctor", *ok, "device=cuda:0"], "device=cuda:0: CUDA is not available"),
    }


CASES = ["unknown option", "unknown flag", "unknown command", "bad value type", "out of range", "bad literal",
         "missing config file", "bad yaml", "missing policy dir", "bad override syntax", "override into a scalar",
         "divisibility", "group estimator, one sample", "empty prompt line", "reward not importable", "no reward",
         "pipeline wired key", "sft missing train_file", "demo wired key", "bad device", "cuda without a GPU (sft)",
         "cuda without a GPU (rm)", "cuda without a GPU (ppo)", "cuda without a GPU (eval)",
         "cuda without a GPU (doctor)"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_error(case, tmp_path, tiny_policy, prompt_file, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.chdir(tmp_path)  # any default output directory would appear here
    argv, expect = _bad_cases(tmp_path, tiny_policy, prompt_file)[case]
    if "cuda" in case:  # the message a machine without a GPU gives, wherever the test runs
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_dir = tmp_path / "out"
    if argv[0] in ("ppo", "sft", "rm", "demo", "pipeline") and case not in ("unknown command",):
        argv = [*argv, f"output_dir={out_dir}"]
    before = set(os.listdir(tmp_path))
    code = main(argv)
    assert code == 2
    line = _one_error_line(capsys)
    assert expect in line, line
    assert not out_dir.exists()
    assert set(os.listdir(tmp_path)) == before  # nothing else created either (no runs/...)


def test_bad_input_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tether", "ppo", "kl_coef=-1", f"output_dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tether: error: kl_coef"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_debug_shows_traceback():
    from tether.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["ppo", "--debug", "kl_coef=-1"])


def test_keyboard_interrupt_exit_130(monkeypatch, capsys):
    import tether.cli as cli

    def boom(cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.RUNNERS, "eval", boom)
    code = main(["eval", "policies={a: x}", "prompts=p", "reference=r"])
    assert code == 130
    assert _one_error_line(capsys) == "tether: error: interrupted"


# --------------------------------------------------------------------------------------------- end to end


def test_ppo_end_to_end(tmp_path, tiny_policy, prompt_file, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(f"policy: {tiny_policy}\nprompts: {prompt_file}\nrewards:\n  - kind: python\n"
                   f"    path: _rewards:brevity\nnum_updates: 2\nrollout_batch_size: 4\nmicro_batch_size: 2\n"
                   f"num_ppo_epochs: 1\nresponse_length: 6\n")
    out = tmp_path / "run"
    code = main(["ppo", "--config", str(cfg), f"output_dir={out}", "kl_coef=0.1"])
    said = capsys.readouterr()
    assert code == 0, said.err
    end = [ln for ln in said.out.splitlines() if ln.startswith("[ppo] done in")]
    assert end == [end[0]] and end[0].endswith(f"-> final {out / 'final'}, report {out / 'report.html'}")  # no best/
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "objective/score" in json.loads(lines[0])
    assert (out / "final" / "config.json").is_file() and (out / "final" / "tether_config.yaml").is_file()
    saved = load(type(parse_config("ppo", None, [])), out / "final" / "tether_config.yaml")
    assert saved.kl_coef == 0.1


def test_pipeline_end_to_end_and_skip(tmp_path, tiny_policy, prompt_file, capsys):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"Say {w}:", "completion": f" {w} is fine."}) + "\n"
                           for w in ["one", "two", "three", "four", "five", "six"]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "Rate:", "chosen": "great good", "rejected": "bad awful",
                                         "group": g}) + "\n" for g in ["a", "b", "a", "b", "a", "b"]))
    out = tmp_path / "pipe"
    argv = ["pipeline", f"output_dir={out}", f"sft.model={tiny_policy}", f"sft.train_file={sft}", "sft.max_steps=2",
            "sft.batch_size=2", "sft.eval_fraction=0", f"rm.model={tiny_policy}", f"rm.train_file={pairs}",
            "rm.max_steps=2", "rm.batch_size=2", f"ppo.prompts={prompt_file}", "ppo.num_updates=1",
            "ppo.rollout_batch_size=2", "ppo.micro_batch_size=2", "ppo.num_ppo_epochs=1", "ppo.response_length=4"]
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert all(f"[{s}] done" in first for s in ("sft", "rm", "ppo")), first
    assert f"-> model {out / 'sft'}" in first and f"-> model {out / 'rm'}" in first, first  # the end lines say where
    assert (out / "sft" / "config.json").is_file() and (out / "rm" / "config.json").is_file()
    saved = load(type(parse_config("ppo", None, [])), out / "ppo" / "final" / "tether_config.yaml")
    assert saved.policy == str(out / "sft") and saved.rewards[0].path == str(out / "rm")
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert all(f"[{s}] skipped" in second for s in ("sft", "rm", "ppo")), second


def test_eval_end_to_end(tmp_path, tiny_policy, prompt_file, capsys):
    out = tmp_path / "ev"
    code = main(["eval", f"policies={{a: {tiny_policy}, b: {tiny_policy}}}", f"reference={tiny_policy}",
                 f"prompts={prompt_file}", "judges=[vader, textblob]", "response_length=4", f"output_dir={out}",
                 "samples_per_prompt=2"])
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "b−a" in table and "vader" in table and "ref_ppl" in table
    res = json.loads((out / "results.json").read_text())
    assert res["policies"]["a"]["kl"]["mean"] == 0.0  # a policy against itself
    assert set(res["paired"]["b"]) >= {"vader", "textblob", "kl", "ref_ppl"}
    assert len((out / "samples.jsonl").read_text().splitlines()) == 16
