"""TRL / ``Trainer`` names as aliases (or refused with the fix), the PPO shortcuts (``reward_model``, ``reward_fn``,
``total_episodes``), ``FILE.py:function`` rewards loaded by path, a reward module in the current directory found by
the ``tether`` console script, and the migration table of docs/cli.md."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.cli import main, parse_config
from tether.config.aliases import ALIASES, SAME, TABLE_BEGIN, TABLE_END, migration_table
from tether.config.base import dump
from tether.config.ppo import PPOConfig
from tether.config.dpo import DPOConfig
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig
from tether.config.shortcuts import SHORTCUTS

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"PPOConfig": PPOConfig, "SFTConfig": SFTConfig, "RMConfig": RMConfig, "DPOConfig": DPOConfig}
COMMAND = {"PPOConfig": "ppo", "SFTConfig": "sft", "RMConfig": "rm", "DPOConfig": "dpo"}
BASE = {"ppo": [], "sft": ["train_file=a.jsonl"], "rm": ["train_file=p.jsonl"], "dpo": ["train_file=p.jsonl"]}

# A value for each alias target that differs from tether's default, so that the alias has a visible effect.
VALUES = {"lr": "3e-4", "batch_size": "3", "grad_accum": "2", "num_epochs": "2", "model": "m", "adam_eps": "1e-6",
          "lr_schedule": "constant", "log_every": "3", "eval_every": "4", "checkpoint_every": "7",
          "keep_checkpoints": "3", "eval_batch_size": "5", "clip_eps": "0.3", "clip_eps_high": "0.4",
          "value_clip": "0.5", "num_minibatches": "2", "num_ppo_epochs": "2", "samples_per_prompt": "2",
          "kl_coef": "0.2", "warmup_updates": "3", "response_length": "20", "policy": "p", "reward_model": "rmdir",
          "autocast": "true", "dtype": "true", "precompute_ref_logprobs": "true"}


def _cfg(command: str, *overrides: str):
    return parse_config(command, None, [*BASE[command], *overrides])


def _aliases():
    return [(cls, a) for cls, table in ALIASES.items() for a in table.values()]


@pytest.mark.parametrize("cls, alias", [(c, a) for c, a in _aliases() if a.target],
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_alias_sets_its_target(cls, alias):
    command = COMMAND[cls]
    value = VALUES[alias.target]
    via_alias = _cfg(command, f"{alias.name}={value}")
    if alias.target in SHORTCUTS:  # reward_model_path → reward_model → a rewards entry
        direct = _cfg(command, f"{alias.target}={value}")
        assert via_alias.rewards and via_alias.rewards[-1].path == value
    else:
        target_value = alias.convert(True) if alias.convert else value  # bf16=true → autocast=bfloat16
        direct = _cfg(command, f"{alias.target}={target_value}", *(f"{o}={value}" for o in alias.also))
        assert getattr(via_alias, alias.target) != getattr(_cfg(command), alias.target), "pick a non-default value"
    assert via_alias == direct


def test_every_alias_target_has_a_test_value_and_is_an_option():
    for cls, a in _aliases():
        if a.target:
            assert a.target in VALUES, a.name
            assert a.target in CLASSES[cls].model_fields or a.target in SHORTCUTS, (cls, a.name)
        else:
            assert a.refuse, a.name
    for command, items in SAME.items():
        cls = {"ppo": PPOConfig, "sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig}[command]
        for name, _ in items:
            assert name in cls.model_fields or name in SHORTCUTS, (command, name)
            assert name not in {a.name for a in ALIASES[cls.__name__].values()}


def test_learning_rate_drives_the_critic_too_unless_given():
    assert (_cfg("ppo", "learning_rate=2e-4").lr, _cfg("ppo", "learning_rate=2e-4").critic_lr) == (2e-4, 2e-4)
    cfg = _cfg("ppo", "learning_rate=2e-4", "critic_lr=5e-5")
    assert (cfg.lr, cfg.critic_lr) == (2e-4, 5e-5)
    assert _cfg("sft", "learning_rate=2e-4").lr == 2e-4


def test_bf16_is_mixed_precision_for_sft_and_rm():
    # transformers' bf16 = bf16 compute over float32 master weights: tether's SFT/RM dtype=bfloat16 (issue 11)
    assert _cfg("sft", "train_file=a", "bf16=true").dtype == "bfloat16"
    assert _cfg("rm", "train_file=a", "bf16=false").dtype == "float32"


def test_bf16_is_autocast_for_ppo():
    assert _cfg("ppo", "bf16=true").autocast == "bfloat16" and _cfg("ppo", "bf16=false").autocast == "none"
    from tether.cli import build_parser, command_overrides, parse_args

    args = parse_args(build_parser(), ["ppo", "--bf16"])
    assert parse_config("ppo", None, command_overrides(args)).autocast == "bfloat16"


def test_aliases_in_nested_sections_and_files(tmp_path):
    pipe = _pipe = ["sft.train_file=a", "rm.train_file=b"]
    cfg = parse_config("pipeline", None, [*pipe, "ppo.learning_rate=2e-4", "sft.per_device_train_batch_size=3",
                                          "rm.gradient_accumulation_steps=2", "ppo.num_generations=2",
                                          "ppo.advantage=rloo"])
    assert cfg.ppo.lr == 2e-4 and cfg.sft.batch_size == 3 and cfg.rm.grad_accum == 2
    assert cfg.ppo.samples_per_prompt == 2
    demo = parse_config("demo", None, ["ppo.beta=0.08", "sft.num_train_epochs=2"])
    assert demo.ppo.kl_coef == 0.08 and demo.sft.num_epochs == 2
    y = tmp_path / "trl.yaml"
    y.write_text("learning_rate: 3.0e-6\ncliprange: 0.1\nnum_mini_batches: 2\n")
    cfg = parse_config("ppo", str(y), [])
    assert (cfg.lr, cfg.clip_eps, cfg.num_minibatches) == (3e-6, 0.1, 2)
    saved = dump(cfg)
    assert "learning_rate" not in saved and saved["lr"] == 3e-6  # saved under tether's names
    assert _pipe is pipe


@pytest.mark.parametrize("argv, expect", [
    (["ppo", "per_device_train_batch_size=4", "gradient_accumulation_steps=8"],
     "per_device_train_batch_size: TRL ties the rollout to the per-device micro-batch"),
    (["ppo", "per_device_train_batch_size=4", "gradient_accumulation_steps=8"],
     "here: micro_batch_size=4 rollout_batch_size=32"),
    (["ppo", "--gradient_accumulation_steps", "2"], "here: micro_batch_size=1 rollout_batch_size=2"),
    (["ppo", "num_train_epochs=3"], "num_train_epochs: tether counts updates: set num_updates"),
    (["ppo", "max_steps=100"], "max_steps: tether's PPO counts updates"),
    (["pipeline", "sft.train_file=a", "rm.train_file=b", "ppo.num_train_epochs=1"], "ppo.num_train_epochs: "),
    (["ppo", "learning_rate=1e-5", "lr=2e-5"], "learning_rate and lr are both set"),
    (["sft", "train_file=a", "learning_rate=-1"], "lr: Input should be greater than 0 (got -1) (given as "
                                                  "learning_rate)"),
    (["sft", "train_file=a", "num_train_epochs=2.5"], "num_epochs: "),
    (["ppo", "total_episodes=100", "num_updates=3"], "total_episodes and num_updates are both set"),
    (["ppo", "total_episodes=0"], "total_episodes: must be a positive whole number"),
    (["ppo", "reward_fn=brevity"], "reward_fn: expected FILE.py:function or module:function"),
    (["ppo", "reward_model=[]"], "reward_model: expected a path or a list of paths"),
])
def test_refused_and_bad_aliases_one_line(argv, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, f"output_dir={tmp_path / 'out'}"] if argv[0] != "pipeline" else argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("tether: error: "), err
    assert expect in err[0], err[0]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ shortcuts


def test_reward_shortcuts_become_rewards_entries():
    cfg = _cfg("ppo", "reward_model=runs/rm", "reward_fn=my_rewards.py:brevity")
    assert [(r.kind, r.path, r.name) for r in cfg.rewards] == [("model", "runs/rm", "rm"),
                                                               ("python", "my_rewards.py:brevity", "brevity")]
    two = _cfg("ppo", "reward_model=[runs/a/rm, runs/b/rm]", "reward_fn=[m:f, n:g]",
               "rewards=[{kind: judge, path: vader}]")
    assert [r.name or r.path for r in two.rewards] == ["vader", "a/rm", "b/rm", "f", "g"]  # full entries first
    assert "reward_model" not in dump(two) and len(dump(two)["rewards"]) == 5
    assert PPOConfig(reward_model="d").rewards[0].path == "d"  # the Python API takes them too


def test_reward_shortcuts_in_the_pipeline_come_after_its_reward_model():
    cfg = parse_config("pipeline", None, ["output_dir=out", "sft.train_file=a", "rm.train_file=b",
                                          "ppo.reward_fn=my.py:fn"])
    assert [(r.kind, r.path) for r in cfg.ppo.rewards] == [("model", "out/rm"), ("python", "my.py:fn")]


def test_total_episodes_as_trl_counts_batches():
    assert _cfg("ppo", "total_episodes=100").num_updates == 7                        # ⌈100 / 16⌉
    assert _cfg("ppo", "total_episodes=96", "rollout_batch_size=8").num_updates == 12
    assert PPOConfig.model_fields["rollout_batch_size"].default == 16                # the shortcut's default
    from tether.config.pipeline import DEMO_STAGES

    batch = DEMO_STAGES["ppo"]["rollout_batch_size"]                                 # the demo's prompts/update
    demo = parse_config("demo", None, ["ppo.total_episodes=80"])
    assert demo.ppo.rollout_batch_size == batch and demo.ppo.num_updates == -(-80 // batch)
    quick = parse_config("demo", None, ["quick=true", "ppo.total_episodes=8"])       # quick: 4 prompts/update
    assert quick.ppo.num_updates == 2


# ------------------------------------------------------------------------------------------------ docs


def test_docs_migration_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert TABLE_BEGIN in text and TABLE_END in text
    table = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == migration_table(), "regenerate: python -c 'from tether.config.aliases import " \
                                       "migration_table; print(migration_table())'"
    for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                 "cliprange", "cliprange_value", "vf_coef", "num_mini_batches", "num_ppo_epochs", "num_generations",
                 "beta", "kl_coef", "max_steps", "warmup_steps", "output_dir", "seed", "response_length",
                 "temperature", "missing_eos_penalty", "whiten_rewards", "max_grad_norm", "total_episodes"):
        assert f"| `{name}` |" in table, name


def test_docs_trl_example_parses():
    import re
    import shlex

    from tether.cli import build_parser, command_overrides, parse_args

    text = (ROOT / "docs" / "cli.md").read_text()
    cmd = re.search(r"(tether ppo --sft_model_path.*?)\n```", text, flags=re.S).group(1).replace("\\\n", " ")
    args = parse_args(build_parser(), shlex.split(cmd)[1:])
    cfg = parse_config("ppo", None, command_overrides(args))
    assert cfg.policy == "runs/sft" and cfg.rewards[0].path == "runs/rm" and cfg.lr == cfg.critic_lr == 3e-6
    assert cfg.num_updates == 157 and cfg.micro_batch_size == 1  # ⌈10000 / 64⌉


# ------------------------------------------------------------------------------------------------ reward files


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, _gpt2_tokenizer_proto):
    from conftest import tiny_llama

    tok = copy.deepcopy(_gpt2_tokenizer_proto)
    d = tmp_path_factory.mktemp("policy")
    tiny_llama(len(tok) + 1).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _ppo_argv(policy: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["ppo", f"policy={policy}", f"prompts={prompts}", f"output_dir={out}", "num_updates=1",
            "rollout_batch_size=2", "micro_batch_size=2", "num_ppo_epochs=1", "response_length=4", "progress=false",
            "monitor.report=false", "monitor.preflight=false", *extra]


REWARD_FILE = "def shortness(prompts, completions):\n    return [-len(c) / 10.0 for c in completions]\n"


def test_reward_fn_file_loaded_by_path(tmp_path, tiny_policy, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "my_scores.py").write_text(REWARD_FILE)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n{"prompt": "The film"}\n')
    out = tmp_path / "run"
    assert main(_ppo_argv(tiny_policy, prompts, out, f"--reward_fn={d / 'my_scores.py'}:shortness")) == 0, \
        capsys.readouterr().err
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "objective/score" in rec and rec["objective/score"] <= 0  # the file's function scored the completions
    assert "my_scores" not in sys.modules  # loaded by path, not imported by module name
    capsys.readouterr()
    assert main(_ppo_argv(tiny_policy, prompts, tmp_path / "run2", "reward_fn=missing.py:f")) == 2
    assert "python reward 'missing.py:f': file missing.py not found" in capsys.readouterr().err
    (tmp_path / "broken.py").write_text("def f(:\n")
    assert main(_ppo_argv(tiny_policy, prompts, tmp_path / "run3", "reward_fn=broken.py:f")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot import broken.py (SyntaxError" in err[0]


def test_console_script_imports_a_reward_module_from_the_current_directory(tmp_path, tiny_policy):
    """The ``tether`` console script runs with its bin directory first on sys.path, not the current directory (as
    ``python -m tether`` has): a launcher of the same shape must still find ``./my_rewards.py``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "tether"
    launcher.write_text("import sys\nfrom tether.cli import main\nsys.exit(main())\n")  # what pip generates
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_rewards.py").write_text(REWARD_FILE)
    (work / "p.jsonl").write_text('{"prompt": "Hello"}\n{"prompt": "The film"}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = bin_dir / "probe"
    probe.write_text("import os, sys\nprint(any(p in ('', '.', os.getcwd()) for p in sys.path))\n")
    premise = subprocess.run([sys.executable, str(probe)], cwd=work, env=env, capture_output=True, text=True)
    assert premise.stdout.strip() == "False"  # a script's own directory is on sys.path, the current one is not
    r = subprocess.run([sys.executable, str(launcher), *_ppo_argv(tiny_policy, Path("p.jsonl"), Path("run"),
                                                                  "reward_fn=my_rewards:shortness")],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (work / "run" / "metrics.jsonl").is_file()
