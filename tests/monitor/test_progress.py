"""Progress bars show on a terminal and stay silent off one (CI logs stay readable): the shared helper, asset-build
step lines, and evaluation."""

from __future__ import annotations

import copy

import pytest

from tether import console as progress_mod
from tether.console import on_terminal, progress


def test_quiet_off_a_terminal(capsys):
    assert not on_terminal()  # pytest captures stderr: not a TTY
    for _ in progress(range(5), desc="work"):
        pass
    bar = progress(total=3, desc="steps")
    bar.update(3)
    bar.set_postfix(score="1.0")
    bar.close()
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "on_terminal", lambda stream=None: True)
    for _ in progress(range(3), desc="work"):
        pass
    assert "work" in capsys.readouterr().err
    for _ in progress(range(3), desc="off", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_asset_step_lines_are_plain_lines(capsys):
    from tether.assets.cache import step

    step("smollm2: building")
    err = capsys.readouterr().err
    assert err == "[tether] smollm2: building\n"


@pytest.fixture
def policy_dir(tmp_path, make_llama, gpt2_tok):
    d = tmp_path / "policy"
    make_llama(len(gpt2_tok) + 1).save_pretrained(d)
    tok = copy.deepcopy(gpt2_tok)
    tok.save_pretrained(d)
    return d


def test_evaluation_quiet_off_a_terminal_and_bar_on_one(policy_dir, capsys, monkeypatch):
    from tether.eval.compare import evaluate_policies

    kw = dict(judges=[], reward_model_path=None, reference_path=str(policy_dir), response_length=3,
              micro_batch_size=2)
    evaluate_policies({"a": str(policy_dir)}, ["The movie was", "Why", "I think"], **kw)
    cap = capsys.readouterr()
    assert cap.err == "" and "\r" not in cap.out
    assert cap.out.strip() == "[eval] a: 3 completions scored"
    monkeypatch.setattr(progress_mod, "on_terminal", lambda stream=None: True)
    evaluate_policies({"a": str(policy_dir)}, ["The movie was", "Why", "I think"], **kw)
    err = capsys.readouterr().err
    assert "eval a" in err and "3/3" in err


def test_ppo_run_is_quiet_off_a_terminal(tmp_path, capfd, gpt2_tok, make_llama):
    """Off a terminal a whole PPO run (with a critic, checkpoints, the final save and the report) writes no progress
    bars, neither tether's nor transformers' own weight loading/saving bars."""
    from tether.algos.ppo_trainer import PPOTrainer
    from tether.config.ppo import PPOConfig

    cfg = PPOConfig(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=6,
                    num_updates=2, num_ppo_epochs=1, checkpoint_every=1, critic_mode="separate")
    PPOTrainer(cfg, policy=make_llama(len(gpt2_tok) + 1), tokenizer=gpt2_tok,
               reward=lambda p, c: [float(len(x)) for x in c], prompts=["The movie was", "I think"]).train()
    err = capfd.readouterr().err
    assert (tmp_path / "run" / "final" / "critic" / "model.safetensors").is_file()
    for bar in ("Writing model shards", "Loading weights", "it/s", "%|"):
        assert bar not in err, err
