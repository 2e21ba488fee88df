"""``time_limit_s``: the run stops after the update during which the limit is reached, that update is evaluated,
``final/`` and the last checkpoint are written as at a normal end, and the finished run is reused as it is."""

from __future__ import annotations

import json

from _trainers import PROMPTS, QUIET, length_reward, make

from tether.algos.ppo_trainer import PPOTrainer
from tether.engine.loop import RunLoop


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_time_limit_stops_after_the_update_that_reaches_it(tmp_path, make_llama, gpt2_tok, monkeypatch):
    # a clock of 10 s per update done: the limit of 25 s is reached during update 3 of 10
    monkeypatch.setattr(RunLoop, "elapsed", lambda self: 10.0 * self.step)
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:4]))
    monitor = {**QUIET, "eval_every": 100, "eval_prompts": str(ev), "eval_num_prompts": 4, "judges": ["vader"]}
    vocab = len(gpt2_tok) + 1  # the trainer adds a pad token to the tokenizer it is given
    model = make_llama(vocab)
    t = make(tmp_path, gpt2_tok, model, length_reward, num_updates=10, time_limit_s=25.0, lr_schedule="constant",
             checkpoint_every=0, monitor=monitor)
    history = t.train()
    out = tmp_path / "run"
    assert [r["update"] for r in history] == [1, 2, 3] == [r["update"] for r in _metrics(out)]
    assert "eval/vader" in history[-1] and all("eval/vader" not in r for r in history[:-1])  # the last is evaluated
    assert (out / "final" / "tether_config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["update-000003"]
    # built again on the same output_dir: the finished run is reused, nothing is trained
    again = make(tmp_path, gpt2_tok, make_llama(vocab), length_reward, num_updates=10,
                 time_limit_s=25.0, lr_schedule="constant", checkpoint_every=0, monitor=monitor)
    assert again.run.finished and [r["update"] for r in again.train()] == [1, 2, 3]
    # the final save was lost (a crash after the last checkpoint): the resumed run is past its limit, takes no
    # update, and saves final/ from the checkpoint
    import shutil

    shutil.rmtree(out / "final")
    third = make(tmp_path, gpt2_tok, make_llama(vocab), length_reward, num_updates=10,
                 time_limit_s=25.0, lr_schedule="constant", checkpoint_every=0, monitor=monitor)
    assert not third.run.finished and [r["update"] for r in third.train()] == [1, 2, 3]
    assert (out / "final" / "tether_config.yaml").is_file() and len(_metrics(out)) == 3


def test_time_limit_on_the_real_clock_and_no_limit(tmp_path, make_llama, gpt2_tok):
    model = make_llama(len(gpt2_tok) + 1)
    t = make(tmp_path, gpt2_tok, model, length_reward, num_updates=4, time_limit_s=1e-3, lr_schedule="constant")
    assert len(t.train()) == 1  # a fresh run takes at least one update, which takes longer than a millisecond
    t2: PPOTrainer = make(tmp_path, gpt2_tok, model, length_reward, name="nolimit", num_updates=2)
    assert len(t2.train()) == 2


def test_sampled_tokens_count_what_the_sampler_drew(tmp_path, make_eos_llama, gpt2_tok, monkeypatch):
    """``rollout/sampled_tokens`` = rows × the steps the sampler ran: response_length without stop_at_eos, the
    longest completion with it (the oracle: the sampler's own count of forward steps)."""
    import tether.rollout.generate as generate

    steps = []
    real = generate.sample

    def spy(*a, **k):
        drawn = real(*a, **k)
        steps.append(drawn.steps)
        return drawn

    monkeypatch.setattr(generate, "sample", spy)
    for stop in (True, False):
        model = make_eos_llama(gpt2_tok, PROMPTS, target_p=0.9)
        t = make(tmp_path, gpt2_tok, model, length_reward, name=f"eos{stop}", stop_at_eos=stop, response_length=12)
        (m,) = t.train()
        assert m["rollout/sampled_tokens"] == 8 * steps[-1]
    assert steps[1] == 12 and steps[0] < 12  # EOS is likely: with stop_at_eos sampling ended early
