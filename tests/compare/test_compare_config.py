"""`tether compare`'s config: the method registry (each entry one valid PPO config at the matched budget), the
wiring of every run, ``quick``, and one-line errors naming the option for each bad input."""

from __future__ import annotations

import pytest

from tether.cli import parse_config
from tether.config.compare import COMPARE_QUICK, METHODS, CompareConfig
from tether.errors import ConfigError

TASK = ["sft=runs/sft", "reward_fn=_compare_rewards:spaces", "prompts=p.jsonl", "eval_prompts=e.jsonl"]


def cfg(*overrides: str) -> CompareConfig:
    return parse_config("compare", None, [*TASK, *overrides])


SAMPLING = [m for m, spec in METHODS.items() if spec.stage == "ppo"]


def test_every_registry_method_is_one_ppo_config_with_the_same_completions_per_update():
    c = cfg(f"methods={SAMPLING}", "completions_per_update=8", "seeds=[3, 4]", "num_updates=7")
    for m in SAMPLING:
        spec = METHODS[m]
        sc = c.stage_config(m, 4)
        assert sc.advantage == spec.options["advantage"]
        assert sc.rollout_batch_size * sc.samples_per_prompt == 8
        assert sc.samples_per_prompt == spec.options.get("samples_per_prompt", 1)
        assert (sc.seed, sc.num_updates, sc.time_limit_s) == (4, 7, None)
        assert sc.output_dir == f"runs/compare/{m}/seed4" and sc.policy == "runs/sft"
        assert sc.monitor.eval_prompts == "e.jsonl" and sc.monitor.judges == ["vader", "textblob", "afinn"]
    assert c.stage_config("grpo", 3).rollout_batch_size == 2 and c.stage_config("ppo", 3).uses_critic
    assert {c.stage_config(m, 3).response_length for m in SAMPLING} == {32}


def test_dpo_is_one_dpo_config_on_the_tasks_pairs():
    from tether.config.dpo import DPOConfig

    c = cfg("methods=[rloo, dpo]", "pairs=pairs.jsonl", "method_options.dpo.beta=0.2", "seeds=[5]")
    d = c.stage_config("dpo", 5)
    assert isinstance(d, DPOConfig) and (d.model, d.train_file, d.seed, d.beta) == ("runs/sft", "pairs.jsonl", 5, 0.2)
    assert d.output_dir == "runs/compare/dpo/seed5" and d.loss_type == "sigmoid"
    demo = parse_config("compare", None, ["task=demo", "demo_dir=dd", "methods=[dpo]"])
    assert demo.stage_config("dpo", 0).train_file == "dd/data/pairs_train.jsonl"


def test_user_options_shared_and_per_method_and_the_time_budget():
    c = cfg("methods=[ppo, grpo]", "ppo.kl_coef=0.2", "ppo.response_length=9", "ppo.monitor.report=false",
            "method_options.grpo.samples_per_prompt=2", "method_options.grpo.kl_coef=0.3", "budget=time",
            "time_limit_s=60", "num_updates=100")
    g, p = c.stage_config("grpo", 0), c.stage_config("ppo", 0)
    assert (g.kl_coef, p.kl_coef, g.response_length, p.response_length) == (0.3, 0.2, 9, 9)
    assert (g.samples_per_prompt, g.rollout_batch_size) == (2, 4)
    assert g.time_limit_s == p.time_limit_s == 60 and g.lr_schedule == "constant" and g.num_updates == 100
    assert p.monitor.report is False


def test_quick_fills_what_you_did_not_set():
    q = cfg("quick=true", "num_updates=3")
    assert q.num_updates == 3 and q.seeds == COMPARE_QUICK["seeds"] and q.eval_every == COMPARE_QUICK["eval_every"]
    assert cfg().seeds == [0, 1, 2]


def test_demo_task_takes_the_demos_paths_and_ppo_settings():
    c = parse_config("compare", None, ["task=demo", "demo_dir=somewhere", "methods=[ppo, rloo]"])
    sc = c.stage_config("rloo", 1)
    assert sc.policy == "somewhere/sft" and sc.rewards[0].path == "somewhere/rm"
    assert sc.prompts == "somewhere/data/prompts_train.jsonl"
    assert sc.monitor.eval_prompts == "somewhere/data/prompts_eval.jsonl"
    assert (sc.kl_coef, sc.response_length, sc.rollout_batch_size, sc.samples_per_prompt) == (0.1, 16, 2, 4)
    assert c.stage_config("ppo", 1).critic_mode == "shared"


@pytest.mark.parametrize("overrides, expected", [
    (["methods=[ppo, dqn]"], "methods: unknown method 'dqn'; known: ppo, grpo, rloo, reinforce_pp"),
    (["methods=[ppo]", "method_options.grpo.lr=1"], "method_options.grpo: not one of methods (ppo)"),
    (["ppo.num_updates=3"], "ppo.num_updates is set by tether compare (num_updates); remove it"),
    (["ppo.monitor.judges=[vader]"], "ppo.monitor.judges is set by tether compare (judges); remove it"),
    (["ppo.advantage=rloo"], "ppo.advantage: set per method by the registry"),
    (["method_options.grpo.response_length=8"], "method_options.grpo.response_length: one method may not change"),
    (["method_options.rloo.temperature=1.0"], "method_options.rloo.temperature: one method may not change"),
    (["methods=[dpo]"], "pairs: required for method dpo (preference pairs) unless task=demo"),
    (["methods=[dpo]", "pairs=x", "budget=time", "time_limit_s=5"], "methods: dpo has no wall-time limit"),
    (["methods=[dpo]", "pairs=x", "method_options.dpo.model=m"], "method_options.dpo.model is set by tether compare"),
    (["methods=[dpo]", "pairs=x", "method_options.dpo.beta=0"], "methods.dpo.beta: Input should be greater than 0"),
    (["budget=time"], "time_limit_s: required with budget=time"),
    (["time_limit_s=5"], "time_limit_s: only with budget=time"),
    (["budget=time", "time_limit_s=5", "ppo.lr_schedule=linear"], "budget=time needs lr_schedule=constant"),
    (["completions_per_update=6", "ppo.micro_batch_size=2"],
     "methods.grpo: samples_per_prompt=4 must divide completions_per_update=6"),
    (["ppo.kl_coef=-1"], "methods.ppo.kl_coef: Input should be greater than or equal to 0"),
    (["seeds=[1, 1]"], "seeds: give one or more distinct seeds"),
    (["budgett=time"], "budgett: unknown option"),
])
def test_bad_input_is_one_line_naming_the_option(overrides, expected):
    with pytest.raises(ConfigError) as err:
        cfg(*overrides)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg


def test_custom_task_needs_its_paths():
    with pytest.raises(ConfigError, match="^eval_prompts: required unless task=demo"):
        parse_config("compare", None, TASK[:3])
    with pytest.raises(ConfigError, match="^reward_model: give a reward"):
        parse_config("compare", None, ["sft=a", "prompts=p", "eval_prompts=e"])


def test_docs_table_shows_the_registry():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "compare.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \| (\w+) \| (.*?) \|", text, flags=re.M)}
    assert set(rows) == set(METHODS)
    for name, spec in METHODS.items():
        row = rows[name]
        assert f"| {spec.stage} |" in row
        shown = dict(re.findall(r"`(\w+): (\w+)`", row))
        assert shown == {k: str(v) for k, v in spec.options.items()}, (name, shown)
