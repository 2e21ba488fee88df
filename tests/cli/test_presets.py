"""Presets (``preset=NAME``): each preset's values against its documented table and against the reference numbers,
user values winning in every form and order (YAML, command line, flags, pipeline, demo, Python API), the one-line
refusal of an unknown name, ``--help``, and docs/presets.md being the generated text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tether.cli import build_parser, command_overrides, main, parse_args, parse_config
from tether.config.ppo import PPOConfig
from tether.config.presets import (PRESET_NAMES, PRESETS, TABLES_BEGIN, TABLES_END, accounted_options,
                                   presets_markdown)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "presets.md"


def _value(cell: str):
    text = cell.strip().strip("`")
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads 3e-06 as a string
        except ValueError:
            return v
    return v


def _doc_rows(name: str) -> dict[str, object]:
    """``{option: value}`` from the preset's table in docs/presets.md (parsed from the Markdown, not the code)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"### `{name}`:", 1)[1].split("Not mapped:", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| `(\w+)` \| (`[^`]*`) \|", line)
        if m:
            rows[m.group(1)] = _value(m.group(2))
    return rows


def test_docs_preset_tables_are_the_generated_ones():
    text = DOC.read_text(encoding="utf-8")
    assert TABLES_BEGIN in text and TABLES_END in text
    body = text.split(TABLES_BEGIN, 1)[1].split(TABLES_END, 1)[0].strip()
    assert body == presets_markdown(), "regenerate docs/presets.md between the markers from presets_markdown()"
    for name in PRESET_NAMES:
        assert f"| `{name}` |" in text.split(TABLES_BEGIN)[0], f"{name} missing from the list of presets"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_config_equals_its_documented_table(name):
    """Every row of the preset's table in docs/presets.md holds in the validated config, every option the presets
    account for has a row or a "not mapped" line naming it, and the options the preset does not name keep
    tether's defaults."""
    rows = _doc_rows(name)
    cfg = PPOConfig(preset=name)
    default = PPOConfig()
    assert rows, f"no table for {name}"
    assert len(rows) == len(PRESETS[name].settings), "a field appears twice in the table"
    for field, value in rows.items():
        got = getattr(cfg, field)
        assert got == value and isinstance(got, bool) == isinstance(value, bool), \
            f"{name}.{field}: config {got!r}, documented {value!r}"
    explained = {n.field for n in PRESETS[name].not_mapped if n.field}
    missing = set(accounted_options(PRESETS[name])) - set(rows) - explained
    assert not missing, f"{name} neither sets nor explains {sorted(missing)}"
    for field in PPOConfig.model_fields:
        if field not in rows and field != "preset":
            assert getattr(cfg, field) == getattr(default, field), field
    assert cfg.preset == name


# The reference numbers, typed from ../shared/reference/ppo_details.md §0/§1 and the systems' config files (not
# from tether's table), so a slip in the table fails here.
REFERENCE = {
    "nplus": dict(lr=3e-6, adam_eps=1e-5, rollout_batch_size=512, num_ppo_epochs=4, num_minibatches=1, clip_eps=0.2,
                  value_clip=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, kl_coef=0.05, kl_controller="fixed",
                  kl_estimator="k1", whiten_rewards=False, whiten_advantages=True, entropy_coef=0.0,
                  max_grad_norm=None, temperature=0.7, response_length=53, stop_at_eos=False,
                  missing_eos_penalty=1.0, missing_eos_mode="replace", score_placement="eos+1"),
    "lmhp": dict(lr=1e-5, rollout_batch_size=512, num_ppo_epochs=4, num_minibatches=1, clip_eps=0.2, value_clip=0.2,
                 vf_coef=0.1, gamma=1.0, lam=0.95, kl_coef=0.15, kl_controller="adaptive", kl_target=6.0,
                 kl_horizon=10000.0, kl_estimator="k1", whiten_rewards=True, entropy_coef=0.0, temperature=0.7,
                 response_length=24, stop_at_eos=False, critic_mode="shared", adam_eps=1e-5, max_grad_norm=None),
    "trl": dict(lr=3e-6, num_ppo_epochs=4, num_minibatches=1, clip_eps=0.2, value_clip=0.2, vf_coef=0.1, gamma=1.0,
                lam=0.95, kl_coef=0.05, kl_estimator="k1", whiten_rewards=False, temperature=0.7, response_length=53,
                missing_eos_penalty=None, score_placement="eos+1", max_grad_norm=None, adam_eps=1e-8,
                rollout_batch_size=8),
    "openrlhf": dict(lr=1e-6, critic_lr=9e-6, rollout_batch_size=1024, num_minibatches=8, num_ppo_epochs=1,
                     clip_eps=0.2, value_clip=0.5, gamma=1.0, lam=1.0, kl_coef=0.01, kl_estimator="k1",
                     temperature=1.0, max_grad_norm=1.0, adam_eps=1e-8, score_clip=10.0, lr_schedule="cosine"),
    "verl_ppo": dict(lr=1e-6, critic_lr=1e-5, rollout_batch_size=1024, num_minibatches=4, num_ppo_epochs=1,
                     clip_eps=0.2, dual_clip=3.0, value_clip=0.5, gamma=1.0, lam=1.0, kl_coef=0.0, temperature=1.0,
                     response_length=512, max_prompt_length=512, weight_decay=0.01, max_grad_norm=1.0,
                     lr_schedule="constant", loss_aggregation="token_mean", entropy_coef=0.0),
    "verl_grpo": dict(advantage="grpo", samples_per_prompt=5, lr=1e-6, rollout_batch_size=1024, num_minibatches=4,
                      num_ppo_epochs=1, clip_eps=0.2, dual_clip=3.0, kl_coef=0.001, kl_in="loss", kl_estimator="k3",
                      kl_log_ratio_clamp=20.0, grpo_std_eps=1e-6, temperature=1.0, response_length=512,
                      loss_aggregation="token_mean"),
}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_matches_the_reference_numbers(name):
    cfg = PPOConfig(preset=name)
    for field, value in REFERENCE[name].items():
        assert getattr(cfg, field) == value, f"{name}.{field}: {getattr(cfg, field)!r} != reference {value!r}"


def test_every_preset_has_a_reference_check():
    assert set(REFERENCE) == set(PRESET_NAMES)


# ------------------------------------------------------------------------------------------------ user values win


def _cli(*argv: str):
    """The config ``tether ppo ARGV`` builds (flags turned into overrides as the command does)."""
    args = parse_args(build_parser(), ["ppo", *argv])
    return parse_config("ppo", args.config, command_overrides(args))


def test_command_line_value_wins_in_either_order():
    for overrides in (["preset=trl", "kl_coef=0.1"], ["kl_coef=0.1", "preset=trl"],
                      ["--preset", "trl", "--kl_coef", "0.1"], ["--kl-coef=0.1", "--preset=trl"]):
        cfg = _cli(*overrides)
        assert cfg.kl_coef == 0.1 and cfg.preset == "trl", overrides
        assert cfg.lr == 3e-6 and cfg.score_placement == "eos+1"  # the rest is the preset's
    assert parse_config("ppo", None, ["preset=trl"]).kl_coef == 0.05


def test_yaml_value_wins_over_a_preset_given_anywhere(tmp_path):
    with_preset = tmp_path / "a.yaml"
    with_preset.write_text("preset: trl\nkl_coef: 0.1\n")
    assert parse_config("ppo", str(with_preset), []).kl_coef == 0.1
    value_only = tmp_path / "b.yaml"
    value_only.write_text("kl_coef: 0.1\nnum_ppo_epochs: 2\n")
    cfg = parse_config("ppo", str(value_only), ["preset=nplus"])
    assert (cfg.kl_coef, cfg.num_ppo_epochs, cfg.lr, cfg.rollout_batch_size) == (0.1, 2, 3e-6, 512)
    preset_only = tmp_path / "c.yaml"
    preset_only.write_text("preset: lmhp\n")
    cfg = parse_config("ppo", str(preset_only), ["kl_controller=fixed"])
    assert cfg.kl_controller == "fixed" and cfg.kl_coef == 0.15


def test_trl_alias_counts_as_a_user_value():
    cfg = parse_config("ppo", None, ["preset=verl_ppo", "learning_rate=2e-5"])
    assert cfg.lr == 2e-5 and cfg.critic_lr == 2e-5  # the alias sets both, over the preset's 1e-6 / 1e-5


def test_total_episodes_divides_by_the_presets_batch():
    assert parse_config("ppo", None, ["preset=trl", "total_episodes=80"]).num_updates == 10  # 8 prompts/update
    assert parse_config("ppo", None, ["preset=trl", "total_episodes=80",
                                      "rollout_batch_size=40"]).num_updates == 2


def test_python_api_and_pipeline():
    cfg = PPOConfig(preset="openrlhf", kl_coef=0.2)
    assert cfg.kl_coef == 0.2 and cfg.critic_lr == 9e-6
    pipe = parse_config("pipeline", None, ["sft.model=m", "sft.train_file=a.jsonl", "rm.model=m",
                                           "rm.train_file=p.jsonl", "ppo.preset=verl_grpo", "ppo.kl_coef=0.01"])
    assert pipe.ppo.preset == "verl_grpo" and pipe.ppo.advantage == "grpo" and pipe.ppo.kl_coef == 0.01
    assert pipe.ppo.rewards[0].name == "reward_model"  # the wiring still applies


def test_demo_preset_replaces_the_demo_settings_but_not_yours():
    plain = parse_config("demo", None, [])
    assert plain.ppo.critic_mode == "shared" and plain.ppo.response_length == 16  # the demo's own settings
    cfg = parse_config("demo", None, ["ppo.preset=trl", "ppo.rollout_batch_size=4", "ppo.micro_batch_size=2"])
    assert cfg.ppo.critic_mode == "separate" and cfg.ppo.response_length == 53 and cfg.ppo.lr == 3e-6
    assert cfg.ppo.rollout_batch_size == 4 and cfg.ppo.micro_batch_size == 2
    assert cfg.ppo.prompts.endswith("prompts_train.jsonl")  # wired as before


# ------------------------------------------------------------------------------------------------ refusals, help


@pytest.mark.parametrize("argv, hint", [(["ppo", "preset=trll"], "did you mean trl?"),
                                        (["ppo", "--preset", "verl-grpo"], "did you mean verl_grpo?"),
                                        (["ppo", "preset=nothing_like_it"], "")])
def test_unknown_preset_is_one_line_with_the_list(argv, hint, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unknown preset" in err and hint in err
    assert "(presets: nplus, lmhp, trl, openrlhf, verl_ppo, verl_grpo)" in err


def test_unknown_preset_in_a_pipeline_names_the_stage(capsys):
    assert main(["pipeline", "sft.model=m", "sft.train_file=a.jsonl", "rm.model=m", "rm.train_file=p.jsonl",
                 "ppo.preset=trll"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tether: error: ppo: preset: unknown preset 'trll'")


def test_ppo_help_mentions_preset(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    out = capsys.readouterr().out
    assert "[preset]" in out and "preset ({nplus,lmhp,trl,openrlhf,verl_ppo,verl_grpo} | null" in out
    assert "docs/presets.md" in out


def test_saved_config_reloads_to_the_same_config(tmp_path):
    """A run saves its resolved config (preset name and every value); reading it back builds the same config, so
    resuming a preset run sees no change."""
    from tether.config.base import dump, load

    cfg = PPOConfig(preset="verl_grpo", kl_coef=0.01, rollout_batch_size=4, micro_batch_size=5)
    path = tmp_path / "tether_config.yaml"
    path.write_text(yaml.safe_dump(dump(cfg)))
    again = load(PPOConfig, path)
    assert again == cfg and again.preset == "verl_grpo" and again.kl_coef == 0.01
