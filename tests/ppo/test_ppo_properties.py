"""Property tests of the PPO trainer on tiny random models with the real GPT-2 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from _trainers import PROMPTS, make_trainer

from tether import ops
from tether.models.forward import causal_lm_logits
from tether.models.load import ensure_pad_token, resize_for_tokenizer


def test_first_minibatch_ratio_is_exactly_one(tmp_path, gpt2_tok, make_llama):
    """O1: through every micro-batch of the first minibatch of the first epoch, ratio == 1 and clipfrac == 0."""
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), temperature=0.7)
    m = tr.step()
    assert m["policy/first_minibatch_ratio_dev"] == 0.0
    assert m["policy/first_minibatch_clipfrac"] == 0.0
    # and the update moved the policy afterwards (later epochs see ratio != 1)
    assert m["policy/ratio_max"] > 1.0


def test_policy_equal_to_reference_gives_zero_kl(tmp_path, gpt2_tok, make_llama):
    """O5: at the first rollout the policy is the reference, so every per-token KL sample is 0."""
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), temperature=0.7)
    m = tr.step()
    assert m["objective/kl"] == 0.0
    assert m["objective/rlhf_reward"] == pytest.approx(m["objective/score"], abs=1e-7)


def test_rollout_logprobs_match_training_forward(tmp_path, gpt2_tok, make_llama):
    """O2: the sampler's log-probs (processed scores of generate) equal the tempered training forward."""
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), temperature=0.6)
    m = tr.step()
    assert m["rollout/logprob_mismatch_max"] < 1e-4


def test_mismatch_metric_catches_missing_temperature(tmp_path, gpt2_tok, make_llama, monkeypatch):
    """Negative control for O2: if the training forward forgets 1/T, the logged mismatch is large."""
    import tether.rollout.generate as gen

    real = ops.logprobs_from_logits
    monkeypatch.setattr(gen.ops, "logprobs_from_logits", lambda logits, tokens, temperature=1.0, **kw:
                        real(logits, tokens, 1.0, **kw))
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), temperature=0.5)
    m = tr.step()
    assert m["rollout/logprob_mismatch_max"] > 0.1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_does_not_change_logits(gpt2_tok, make_llama, make_gpt2, arch):
    """O3: real-token logits of a left-padded row equal those of the unpadded row (absolute and RoPE positions)."""
    ensure_pad_token(gpt2_tok)
    model = (make_gpt2 if arch == "gpt2" else make_llama)(len(gpt2_tok))
    ids = torch.tensor([gpt2_tok("hello there, how are you")["input_ids"]])
    pad = torch.full((1, 5), gpt2_tok.pad_token_id)
    padded = torch.cat([pad, ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool)], 1)
    with torch.no_grad():
        ref = causal_lm_logits(model, ids, torch.ones_like(ids, dtype=torch.bool))
        got = causal_lm_logits(model, padded, mask)[:, 5:]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_left_padding_without_position_ids_breaks_gpt2(gpt2_tok, make_gpt2):
    """Negative control for O3: GPT-2 without mask-derived position ids shifts the logits."""
    ensure_pad_token(gpt2_tok)
    model = make_gpt2(len(gpt2_tok))
    ids = torch.tensor([gpt2_tok("hello there, how are you")["input_ids"]])
    padded = torch.cat([torch.full((1, 5), gpt2_tok.pad_token_id), ids], 1)
    mask = (padded != gpt2_tok.pad_token_id).long()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        got = model(input_ids=padded, attention_mask=mask).logits[:, 5:]
    assert (got - ref).abs().max() > 1e-3


def test_micro_batching_does_not_change_the_update(tmp_path, gpt2_tok, make_llama):
    """I4/O16 on the real trainer: one update with micro-batches of 1 equals one with the whole minibatch (float64)."""
    finals = []
    for micro in (1, 8):
        tok = __import__("copy").deepcopy(gpt2_tok)
        model = make_llama(len(gpt2_tok) + 1, dtype=torch.float64)
        tr = make_trainer(tmp_path / f"m{micro}", tok, model, micro_batch_size=micro, num_ppo_epochs=2,
                          max_grad_norm=None)
        tr.step()
        finals.append({k: v.detach().clone() for k, v in tr.policy.state_dict().items()})
        critic = {k: v.detach().clone() for k, v in tr.critic.state_dict().items()}
        finals[-1].update({"critic." + k: v for k, v in critic.items()})
    moved = False
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], atol=1e-10, rtol=0)
    init = make_llama(len(gpt2_tok) + 1, dtype=torch.float64).state_dict()
    moved = any((finals[0][k] - init[k]).abs().max() > 1e-6 for k in init)
    assert moved


def test_same_seed_same_result(tmp_path, gpt2_tok, make_llama):
    """Determinism: same seed and threads ⇒ identical metrics (timings aside) and weights."""
    runs = []
    for i in range(2):
        tok = __import__("copy").deepcopy(gpt2_tok)
        tr = make_trainer(tmp_path / f"r{i}", tok, make_llama(len(gpt2_tok) + 1), num_updates=2)
        tr.train()
        lines = [json.loads(x) for x in (tmp_path / f"r{i}" / "run" / "metrics.jsonl").read_text().splitlines()]
        runs.append(([{k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))} for m in lines],
                     {k: v.clone() for k, v in tr.policy.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k])


def test_reference_and_reward_model_stay_frozen(tmp_path, gpt2_tok, make_llama):
    """O23: reference and reward-model parameters are unchanged after updates (a critic initialised from the RM is
    a copy, so training it leaves the RM alone)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tether.rewards.base import RewardSource
    from tether.rewards.reward_model import RewardModelScorer

    ensure_pad_token(gpt2_tok, "add")
    torch.manual_seed(3)
    rm_model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(gpt2_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=gpt2_tok.pad_token_id)).eval()
    rm = RewardModelScorer(rm_model, gpt2_tok, policy_tokenizer=gpt2_tok)
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok)), reward=RewardSource("rm", rm), num_updates=2,
                      critic_lr=1e-2)
    frozen = {"ref": tr.ref, "rm": rm_model}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in frozen.items()}
    critic_before = [p.detach().clone() for p in tr.critic.parameters()]
    tr.train()
    assert any(not torch.equal(p, q) for p, q in zip(tr.critic.parameters(), critic_before))  # the critic did train
    for name, m in frozen.items():
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[name][k]), (name, k)


def test_outputs_saved_in_save_pretrained_format(tmp_path, gpt2_tok, make_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), num_updates=1)
    tr.train()
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file()
    assert (final / "tether_config.yaml").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.pad_token_id != tok.eos_token_id
    for k, v in tr.policy.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=0, rtol=0)
    assert (final / "critic" / "value_head.safetensors").is_file()


def test_reward_errors_name_the_source(tmp_path, gpt2_tok, make_llama):
    from tether.errors import RewardError, TrainingError

    def bad(prompts, completions):
        return [float("nan")] * len(completions)

    # a NaN reward skips the update; max_consecutive_skips of them in a row stop the run, naming the source
    tr = make_trainer(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), reward=bad, max_consecutive_skips=1)
    with pytest.raises(TrainingError, match="reward 'bad' returned a non-finite value"):
        tr.step()

    def short(prompts, completions):
        return [0.0]

    tr = make_trainer(tmp_path, __import__("copy").deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), reward=short)
    with pytest.raises(RewardError, match="reward 'short': returned"):
        tr.step()


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_stop_at_eos_changes_work_not_masks(gpt2_tok, make_eos_llama, stop_at_eos):
    """Both modes mask everything after the first EOS; only `stop_at_eos=False` samples all R tokens of every row."""
    import tether.rollout.generate as gen
    from tether.rollout.generate import encode_prompts, generate

    model = make_eos_llama(gpt2_tok, PROMPTS, target_p=0.3)
    ensure_pad_token(gpt2_tok, "add")
    resize_for_tokenizer(model, gpt2_tok)
    batch = encode_prompts(gpt2_tok, PROMPTS, PROMPTS, 32)
    calls = []
    original = gen.sample
    gen.sample = lambda *a, **kw: calls.append(out := original(*a, **kw)) or out
    try:
        torch.manual_seed(0)
        rollout, _ = generate(model, gpt2_tok, batch, response_length=12, temperature=1.0, stop_at_eos=stop_at_eos,
                              micro_batch_size=8)
    finally:
        gen.sample = original
    sampled = calls[0].steps  # tokens drawn per row (one forward each)
    assert bool(rollout.has_eos.any()), "the fixture should make EOS likely"
    lengths = rollout.response_mask.sum(1)
    first_eos = (rollout.query_response[:, batch.input_ids.shape[1]:] == gpt2_tok.eos_token_id).float().argmax(1)
    assert bool((lengths[rollout.has_eos] == first_eos[rollout.has_eos] + 1).all())  # EOS itself is kept
    if stop_at_eos:
        assert sampled == int(lengths.max()) <= 12
    else:
        assert sampled == 12
