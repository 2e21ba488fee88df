"""One prompt-encoding rule for every stage (tether.data.prompts): with a BOS-adding tokenizer (Llama/Mistral/Gemma
style) the ids PPO's rollouts, held-out evaluation and ``tether eval`` feed the policy are the ids SFT and reward-model
training put before their completions; ``tether doctor`` compares them."""

from __future__ import annotations

import pytest
import torch

from tether.config.ppo import PPOConfig
from tether.data.preferences import encode_for_reward
from tether.data.prompts import encode_prompt, prompt_ids
from tether.data.sft import tokenize_sft
from tether.rollout.generate import encode_prompts

BOS, EOS = 50257, 50256
PROMPTS = ["The movie was", "Once upon a time, in a small village", "My favourite food is", "I think that"]
TEMPLATE_WITH_BOS = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if m.role == "
                     "'assistant' %}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>"
                     "{% endif %}")
TEMPLATE_NO_BOS = TEMPLATE_WITH_BOS.replace("{{ bos_token }}", "")


def _ppo_ids(tok, text):
    batch = encode_prompts(tok, [text], [text], 512, "left")
    return batch.input_ids[0][batch.attention_mask[0]].tolist()


def _sft_prompt_ids(tok, record):
    ex = tokenize_sft(record, tok)
    n = ex["completion_mask"].index(1)
    return ex["input_ids"][:n]


def test_the_rule_puts_the_bos_first_once(bos_tok, gpt2_tok):
    text_ids = bos_tok("Hello world", add_special_tokens=False)["input_ids"]
    assert prompt_ids(bos_tok, "Hello world") == [BOS, *text_ids]
    assert prompt_ids(bos_tok, "<s>Hello world") == [BOS, *text_ids]  # a template that wrote its own BOS: not doubled
    assert prompt_ids(gpt2_tok, "Hello world") == text_ids  # GPT-2 adds nothing
    assert encode_prompt(bos_tok, "") == ([BOS], [])
    # left truncation drops the oldest text tokens, never the BOS
    long = " ".join(["word"] * 20)
    cut = prompt_ids(bos_tok, long, max_length=5)
    assert len(cut) == 5 and cut[0] == BOS and cut[1:] == prompt_ids(bos_tok, long)[-4:]


@pytest.mark.parametrize("template", [None, TEMPLATE_WITH_BOS, TEMPLATE_NO_BOS])
@pytest.mark.parametrize("which", ["bos", "gpt2"])
def test_ppo_prompt_ids_equal_sft_and_rm_prompt_ids(bos_tok, gpt2_tok, which, template):
    """Plain prompts and chat prompts (templates with and without their own BOS): PPO's prompt ids are exactly the
    tokens in front of the completion in the SFT example and in the decoder reward model's input."""
    tok = bos_tok if which == "bos" else gpt2_tok
    tok.chat_template = template
    from tether.data.readers import render_chat

    for p in PROMPTS:
        cases = [(p, p, " was fine.")]
        if template is not None:
            conv = [{"role": "user", "content": p}]
            cases.append((conv, render_chat(conv, tok, add_generation_prompt=True),
                          [{"role": "assistant", "content": "It was fine."}]))
        for raw, text, completion in cases:
            ppo = _ppo_ids(tok, text)
            assert _sft_prompt_ids(tok, {"prompt": raw, "completion": completion}) == ppo
            rm = encode_for_reward(tok, raw, completion, style="decoder", max_length=512)
            assert rm[: len(ppo)] == ppo and rm[-1] == EOS
            if which == "bos":
                assert ppo[0] == BOS and ppo.count(BOS) == 1


def _rollout_spy():
    seen = []

    class Spy:
        """A reward that sees the token ids of each rollout (the ``score_rollout`` path of a reward model)."""

        def score_rollout(self, rollout):
            seen.append(rollout)
            return torch.zeros(len(rollout.completions))

        def __call__(self, prompts, completions):
            return [0.0] * len(completions)

    return Spy(), seen


def test_ppo_rollouts_and_held_out_evaluation_start_with_the_bos(tmp_path, bos_tok, make_llama):
    """Trainer level: every prompt the policy (and the reference, critic and a same-tokenizer RM) sees in a rollout
    and in the held-out evaluation begins with the BOS the SFT data had."""
    from tether.algos.ppo_trainer import PPOTrainer

    spy, seen = _rollout_spy()
    cfg = PPOConfig(output_dir=str(tmp_path / "run"), rollout_batch_size=4, micro_batch_size=4, response_length=4,
                    num_updates=1, num_ppo_epochs=1, progress=False, sample_every=0, advantage="rloo",
                    samples_per_prompt=2)
    trainer = PPOTrainer(cfg, policy=make_llama(len(bos_tok) + 1), tokenizer=bos_tok, reward=spy, prompts=PROMPTS)
    trainer.step()
    ro = seen[-1]
    first_real = ro.query_response[torch.arange(len(ro.prompts)), ro.attention_mask.long().argmax(1)]
    assert first_real.tolist() == [BOS] * len(ro.prompts)
    for i, text in enumerate(ro.prompts):
        real = ro.query_response[i, : ro.query_length][ro.attention_mask[i, : ro.query_length]].tolist()
        assert real == _sft_prompt_ids(bos_tok, {"prompt": text, "completion": " ok"})

    from tether.eval.heldout import HeldOutEvaluator
    from tether.rewards.base import RewardSource

    seen.clear()
    HeldOutEvaluator(PROMPTS[:2], trainer.tokenizer, rewards=[RewardSource("spy", spy)], response_length=3)(
        trainer.policy)
    assert seen and all(int(r.query_response[i][r.attention_mask[i]][0]) == BOS
                        for r in seen for i in range(len(r.prompts)))


def test_doctor_prompt_encoding_check(bos_tok, make_llama, monkeypatch):
    """``tether doctor`` compares PPO's prompt ids with the SFT/RM ones: it passes with the one rule, and fails when
    the rollout path drops the BOS (the old ``add_special_tokens=False`` encoding)."""
    from tether.doctor import check_prompt_encoding, run_checks

    res = check_prompt_encoding(bos_tok, PROMPTS)
    assert res.status == "pass" and "[50257]" in res.detail
    cfg = PPOConfig(output_dir="unused", monitor={"preflight": False})
    found = {r.name: r for r in run_checks(cfg, policy=make_llama(len(bos_tok) + 1), tokenizer=bos_tok,
                                           reward=lambda p, c: [0.0] * len(c), prompts=PROMPTS, fast=True)}
    assert found["prompt_encoding"].status == "pass"

    import tether.data.prompts as prompts_mod

    monkeypatch.setattr(prompts_mod, "prompt_ids",
                        lambda tok, text, max_length=None: tok(text, add_special_tokens=False)["input_ids"])
    res = check_prompt_encoding(bos_tok, PROMPTS)
    assert res.status == "fail" and "SFT" in res.detail and res.fix
