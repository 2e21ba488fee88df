"""The integration surface for the trainers: a RunLogger and the held-out evaluation (best flag) built from a PPO
trainer, and the fast pre-flight checks on what the trainer loaded."""

from __future__ import annotations

import json
import types

import pytest

from tether.algos.ppo_trainer import PPOTrainer
from tether.config.monitor import MonitorConfig
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError
from tether.eval.heldout import ppo_heldout
from tether.monitor.hooks import ppo_monitor, preflight

PROMPTS = ["The movie was", "I think that", "Once upon a time", "My favourite food is"]


@pytest.fixture
def trainer(tmp_path, gpt2_tok, make_llama):
    cfg = PPOConfig(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=5,
                    num_updates=2, num_ppo_epochs=1, progress=False, sample_every=0)
    return PPOTrainer(cfg, policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
                      reward=lambda p, c: [float(len(x)) for x in c], prompts=PROMPTS)


def _heldout(trainer, mon, judges=None):
    cfg = trainer.cfg.model_copy(update={"monitor": mon})
    return ppo_heldout(cfg, trainer.policy, trainer.tokenizer, trainer.rewards, trainer.ref, judges=judges)


def test_ppo_heldout_evaluates_and_flags_the_best(trainer, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hello there", "The weather is"]))

    def chars(texts):
        return [float(len(t)) for t in texts]

    heldout = _heldout(trainer, MonitorConfig(eval_every=2, eval_prompts=str(held)), judges=[chars])
    assert heldout.best.metric == "eval/chars"
    assert [heldout.due(u) for u in (1, 2, 3)] == [False, True, False] and heldout.due(trainer.cfg.num_updates)
    results = []
    for u in (1, 2):
        trainer.step()
        results.append({"update": u, **heldout()})
    assert {"eval/proxy", "eval/chars", "eval/kl"} <= set(results[0])
    assert heldout.is_best(results[0]) is True and heldout.best.best_update == 1
    assert heldout.is_best(results[1]) == (results[1]["eval/chars"] > results[0]["eval/chars"])


def test_judges_from_config_as_module_function(trainer, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "Hello there"}) + "\n")
    heldout = _heldout(trainer, MonitorConfig(eval_every=1, eval_prompts=str(held),
                                              judges=["tether.monitor.alarms:words"]))
    assert heldout.best.metric == "eval/words" and "words" in heldout.evaluator.judges


def test_ppo_heldout_needs_eval_prompts(trainer):
    with pytest.raises(ConfigError, match="monitor.eval_prompts"):
        _heldout(trainer, MonitorConfig(eval_every=2))


def test_no_eval_when_not_configured(trainer):
    assert _heldout(trainer, MonitorConfig(tensorboard=False, report=False)) is None
    mon = ppo_monitor(trainer, MonitorConfig(tensorboard=False, report=False))
    res = mon.on_update(trainer.step())
    assert not any(k.startswith("eval/") for k in res.metrics)


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
