"""Flags people type: ``--key value`` / ``--key=value`` / ``--flag`` / ``--no-flag`` as overrides, "did you mean" at
every level, ``--version``, and ``--help`` grouped by section and wrapped to the terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tether.cli import build_parser, command_flags, command_overrides, main, parse_args, parse_config
from tether.config.aliases import extra_options
from tether.config.base import help_groups, help_lines
from tether.config.flags import split_flags
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _cfg(argv: list[str]):
    """The validated config of a command line, through the same path as ``main``."""
    args = parse_args(build_parser(), argv)
    return parse_config(args.command, args.config, command_overrides(args))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tether: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ --key value


def test_split_flags_forms():
    pf = command_flags("ppo")
    flags, over = split_flags(PPOConfig, [
        "--kl_coef", "0.1", "--lr=3e-5", "policy=p", "--stop_at_eos", "--no-progress", "--whiten-rewards", "False",
        "--monitor.eval_every", "2", "--config", "f.yaml", "--resume=auto", "--kl_coef", "-1", "--", "--x=1"],
        pf, "ppo", extra_options)
    assert flags == ["--config", "f.yaml", "--resume=auto"]
    assert over == ["kl_coef=0.1", "lr=3e-5", "policy=p", "stop_at_eos=true", "progress=false",
                    "whiten_rewards=False", "monitor.eval_every=2", "kl_coef=-1", "--x=1"]


def test_flag_forms_give_the_same_config_as_key_value():
    base = ["policy=/p", "kl_coef=0.1", "monitor.eval_every=3", "stop_at_eos=false", "progress=true", "lr=3e-5"]
    flags = ["--policy", "/p", "--kl_coef=0.1", "--monitor.eval_every", "3", "--no-stop_at_eos", "--progress",
             "--lr", "3e-5"]
    assert _cfg(["ppo", *base]) == _cfg(["ppo", *flags])
    assert _cfg(["ppo", *flags]).stop_at_eos is False and _cfg(["ppo", *flags]).kl_coef == 0.1
    pipe = ["sft.train_file=a", "rm.train_file=b"]
    nested = _cfg(["pipeline", *pipe, "--ppo.kl_coef", "0.2", "--ppo.no-stop_at_eos", "--sft.max_steps=7"])
    assert nested.ppo.kl_coef == 0.2 and nested.ppo.stop_at_eos is False and nested.sft.max_steps == 7
    assert _cfg(["demo", "--quick", "--ppo.num_updates", "3"]).ppo.num_updates == 3


def test_boolean_flag_takes_a_boolean_word_only():
    assert _cfg(["ppo", "--stop_at_eos", "False"]).stop_at_eos is False
    assert _cfg(["ppo", "--stop_at_eos", "true"]).stop_at_eos is True
    # the next token is an override, not the flag's value
    cfg = _cfg(["ppo", "--no-stop_at_eos", "kl_coef=0.3"])
    assert cfg.stop_at_eos is False and cfg.kl_coef == 0.3


def test_dashes_and_last_one_wins():
    cfg = _cfg(["ppo", "--kl-coef", "0.3", "kl_coef=0.4", "--num-ppo-epochs=2"])
    assert cfg.kl_coef == 0.4 and cfg.num_ppo_epochs == 2


def test_flags_mix_with_the_commands_own(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("kl_coef: 0.2\nlr: 1.0e-4\n")
    cfg = _cfg(["ppo", "--kl_coef", "0.3", "--config", str(y), "--resume", "never", "--lr=2e-4"])
    assert cfg.kl_coef == 0.3 and cfg.lr == 2e-4 and cfg.resume == "never"  # command line beats the file


@pytest.mark.parametrize("argv, expect", [
    (["ppo", "--kl_cof", "0.1"], "unrecognized arguments: --kl_cof; did you mean --kl_coef"),
    (["ppo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["ppo", "--monitor.alarms.kl_mx", "3"], "did you mean --monitor.alarms.kl_max?"),
    (["ppo", "--policy"], "--policy: expected a value"),
    (["ppo", "--policy", "--kl_coef", "1"], "--policy: expected a value"),
    (["ppo", "--no-stop_at_eos=1"], "--no-stop_at_eos: takes no value"),
    (["ppo", "--kl_coef", "-1"], "kl_coef: Input should be greater than or equal to 0 (got -1)"),
])
def test_bad_flags_one_line(argv, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = _one_error(capsys)
    assert expect in line, line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ did you mean


U = "unknown option (see --help for the valid ones); did you mean"


@pytest.mark.parametrize("argv, expect", [
    (["ppo", "kl_cof=0.1"], f"kl_cof: {U} kl_coef"),
    (["ppo", "--kl_cof=0.1"], f"kl_cof: {U} kl_coef"),
    (["ppo", "eval_every=3"], f"eval_every: {U} monitor.eval_every"),
    (["ppo", "monitor.alarms.kl_mx=3"], f"monitor.alarms.kl_mx: {U} monitor.alarms.kl_max?"),
    (["ppo", "rewards=[{kind: python, path: 'a:b', wieght: 2}]"],
     f"rewards.0.wieght: {U} rewards.0.weight?"),
    (["ppo", "learning_rat=1e-5"], f"learning_rat: {U} learning_rate?"),
    (["pipeline", "sft.train_file=a", "rm.train_file=b", "ppo.monitor.eval_evry=3"],
     f"ppo.monitor.eval_evry: {U} ppo.monitor.eval_every"),
    (["sft", "train_file=a", "num_epoch=2"], f"num_epoch: {U} num_epochs"),
    (["eval", "policies={a: x}", "prompts=p", "reference=r", "judgs=[vader]"], "did you mean judges?"),
    (["ppo", "zzzzzz=1"], "zzzzzz: unknown option (see --help for the valid ones)"),
])
def test_did_you_mean(argv, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = _one_error(capsys)
    assert expect in line, line


# ------------------------------------------------------------------------------------------------ --version, --help


def test_version(capsys):
    import tether

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"tether {tether.__version__} (python ") and "torch" in out
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{tether.__version__}"' in pyproject


def _help(argv: list[str], capsys, monkeypatch, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_grouped_by_section(capsys, monkeypatch):
    out = _help(["ppo"], capsys, monkeypatch, 100)
    titles = [t for t, _ in help_groups(PPOConfig) if t]
    assert titles[:4] == ["preset", "models and data", "run length and batch sizes", "sampling"]
    pos = [out.index(f"[{t}]") for t in titles]
    assert pos == sorted(pos)  # the groups in order
    for (title, names), nxt in zip(help_groups(PPOConfig), [*pos[1:], len(out)]):
        start = out.index(f"[{title}]")
        for name in names:
            if name in ("monitor", "policy_lora", "critic_lora"):  # nested sections: listed after the groups
                continue
            at = out.index(f"\n    {name} (")
            assert start < at < nxt, (title, name)
    assert "[shortcuts, expanded before validation]" in out and "reward_fn: a Python reward" in out
    assert "learning_rate→lr+critic_lr" in out


@pytest.mark.parametrize("columns", [60, 100, 140])
def test_help_wrapped_to_the_terminal(columns, capsys, monkeypatch):
    out = _help(["ppo"], capsys, monkeypatch, columns)
    options = out[out.index("[models and data]"): out.index("positional arguments")]
    for line in options.splitlines():
        if len(line) > columns:  # only a head or a word that cannot be broken
            assert " " not in line.strip() or re.match(r"^ +\S+ \(.*\):?$", line), line
    widest = max(len(ln) for ln in options.splitlines())
    assert widest > columns - 25  # the width is used, not a fixed 80
    flat = " ".join(out.split())
    for line in help_lines(PPOConfig):
        assert " ".join(line.split()) in flat


def test_help_sections_match_the_source_comments():
    """``SECTIONS`` (what --help groups by) names the ``# --- title ---`` comments of each config class, in order,
    and every field is in exactly one group."""
    from tether.config.base import StepRun
    from tether.config.rm import RMConfig
    from tether.config.sft import SFTConfig

    for cls, path in ((PPOConfig, "ppo.py"), (SFTConfig, "sft.py"), (RMConfig, "rm.py")):
        src = (ROOT / "tether" / "config" / path).read_text()
        comments = [re.sub(r"\s*\(.*\)$", "", m.strip()) for m in re.findall(r"# --- (.+?) -{3,}", src)]
        declared = [t for t, _ in vars(cls)["SECTIONS"]]
        assert declared == comments, (cls.__name__, declared, comments)
        groups = help_groups(cls)
        names = [n for _, ns in groups for n in ns]
        assert sorted(names) == sorted(cls.model_fields), cls.__name__
        for title, first in vars(cls)["SECTIONS"]:
            assert first in cls.model_fields
            assert any(t == title and ns[0] == first for t, ns in groups), (title, first)
    base = [t for t, _ in vars(StepRun)["SECTIONS"]]  # the base class's groups come last, in its order
    assert [t for t, ns in help_groups(SFTConfig)][-len(base):] == base


def test_split_flags_refuses_unknown_without_value():
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --nope"):
        split_flags(PPOConfig, ["--nope"], command_flags("ppo"), "ppo", extra_options)
