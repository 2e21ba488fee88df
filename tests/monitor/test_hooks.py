"""The integration surface for the trainers: a RunLogger built from a PPO trainer (held-out evaluation, best
checkpoint flag) and the fast pre-flight checks on what the trainer loaded."""

from __future__ import annotations

import json
import types

import pytest

from tether.algos.ppo import PPOTrainer
from tether.config.monitor import MonitorConfig
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError
from tether.monitor.hooks import ppo_monitor, preflight

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is"]


@pytest.fixture
def trainer(tmp_path, gpt2_tok, make_llama):
    cfg = PPOConfig(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=5,
                    num_updates=2, num_ppo_epochs=1, progress=False, sample_every=0)
    return PPOTrainer(cfg, policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
                      reward=lambda p, c: [float(len(x)) for x in c], prompts=PROMPTS)


def test_ppo_monitor_evaluates_and_flags_the_best(trainer, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hello there", "The weather is"]))

    def chars(texts):
        return [float(len(t)) for t in texts]

    mon = ppo_monitor(trainer, MonitorConfig(eval_every=1, eval_prompts=str(held), tensorboard=False, report=False),
                      judges=[chars], quiet=True)
    assert mon.best.metric == "eval/chars"
    results = []
    for _ in range(2):
        m = trainer.step()
        results.append(mon.on_update(m, completions=["a b c", "d e f"], policy=trainer.policy))
    assert {"eval/proxy", "eval/chars", "eval/kl", "text/distinct_share"} <= set(results[0].metrics)
    assert results[0].best is True and mon.best.best_update == 1
    assert results[1].best == (results[1].metrics["eval/chars"] > results[0].metrics["eval/chars"])
    mon.close()


def test_judges_from_config_as_module_function(trainer, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "Hello there"}) + "\n")
    mon = ppo_monitor(trainer, MonitorConfig(eval_every=1, eval_prompts=str(held), tensorboard=False, report=False,
                                             judges=["tether.monitor.alarms:words"]))
    assert mon.best.metric == "eval/words" and "words" in mon.evaluator.judges


def test_ppo_monitor_needs_eval_prompts(trainer):
    with pytest.raises(ConfigError, match="monitor.eval_prompts"):
        ppo_monitor(trainer, MonitorConfig(eval_every=2))


def test_no_eval_when_not_configured(trainer):
    mon = ppo_monitor(trainer, MonitorConfig(tensorboard=False, report=False))
    res = mon.on_update(trainer.step(), policy=trainer.policy)
    assert not any(k.startswith("eval/") for k in res.metrics) and res.best is False


def test_preflight_passes_on_a_trainer(trainer):
    results = preflight(trainer)
    assert {r.name for r in results} >= {"pad_token", "padding", "memory"}
    assert all(r.status != "fail" for r in results)


def test_preflight_failure_is_one_line(gpt2_tok, make_llama):
    gpt2_tok.pad_token = gpt2_tok.eos_token
    fake = types.SimpleNamespace(cfg=PPOConfig(pad_policy="refuse"), policy=make_llama(len(gpt2_tok)),
                                 tokenizer=gpt2_tok, rewards=[], prompts=PROMPTS)
    with pytest.raises(ConfigError) as err:
        preflight(fake)
    msg = str(err.value)
    assert msg.startswith("pre-flight check failed (pad_token:") and "\n" not in msg and "monitor.preflight" in msg
