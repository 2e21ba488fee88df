"""PPO with a LoRA policy (``policy_lora``) and a LoRA critic (``critic_lora``), at the trainer level: the
adapter-off reference (no second copy), what trains, what is saved, and that eval/doctor load the adapter run."""

from __future__ import annotations

import copy

import pytest
import torch
from _trainers import PROMPTS, QUIET, length_reward, make

from tether.config.base import build
from tether.config.ppo import PPOConfig
from tether.errors import ConfigError
from tether.models.lora import AdapterOffReference, is_adapter_run, load_adapter_run
from tether.rollout.generate import response_logprobs

LORA = {"r": 4, "alpha": 8}


def _inputs(tok):
    enc = tok(["The movie was", "Once upon a time there"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _storages(*models) -> set[int]:
    """The distinct tensor storages the models' parameters live in (what memory actually holds)."""
    return {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}


def test_lora_first_ratio_is_one_kl_zero_and_the_reference_stays_the_base(tmp_path, gpt2_tok, make_llama):
    """Update 1: the first minibatch's ratio is exactly 1 and the KL to the adapter-off reference exactly 0 (B = 0);
    after two updates the reference's log-probs still equal the untouched base model's bit for bit, while the
    policy's have moved."""
    model = make_llama(len(gpt2_tok) + 1)
    base = copy.deepcopy(model)
    tr = make(tmp_path, gpt2_tok, model, length_reward, policy_lora=LORA, num_updates=2, lr=1e-2)
    assert isinstance(tr.ref, AdapterOffReference)
    m = tr.step()
    assert m["policy/first_minibatch_ratio_dev"] == 0.0
    assert m["objective/kl"] == 0.0 and m["objective/kl_penalty"] == 0.0
    tr.step()
    ids, mask = _inputs(tr.tokenizer)
    with torch.no_grad():
        ref = response_logprobs(tr.ref, ids, mask, 2, 0.7, 2)
        want = response_logprobs(base.eval(), ids, mask, 2, 0.7, 2)
        pol = response_logprobs(tr.policy, ids, mask, 2, 0.7, 2)
    assert torch.equal(ref, want)
    assert (pol - want).abs().max() > 1e-4  # the adapter did learn something


def test_lora_trains_only_the_adapter_and_the_value_head(tmp_path, gpt2_tok, make_llama):
    """Shared critic on a LoRA policy: the optimizers hold only adapter factors and the value head, and after an
    update only those changed (every base weight bit for bit as before)."""
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), length_reward, policy_lora=LORA,
              critic_mode="shared", lr=1e-2, critic_lr=1e-2)
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    head = {n: p.detach().clone() for n, p in tr.critic.head.named_parameters()}
    in_opt = {id(p) for o in tr.optimizers.values() for g in o.param_groups for p in g["params"]}
    names = {n for n, p in tr.policy.named_parameters() if id(p) in in_opt}
    assert names and all("lora_" in n for n in names)
    assert all(id(p) in in_opt for p in tr.critic.head.parameters())
    assert len(in_opt) == len(names) + 2
    tr.step()
    changed = {n for n, p in tr.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    assert any(not torch.equal(p, head[n]) for n, p in tr.critic.head.named_parameters())


def test_lora_holds_one_model_not_two(tmp_path, gpt2_tok, make_llama):
    """Parameter storages held by policy + reference + shared critic: one model's (plus the adapter and the head),
    against two full copies without LoRA."""
    tr = make(tmp_path / "a", copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), length_reward,
              policy_lora=LORA, critic_mode="shared")
    full = make(tmp_path / "b", copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), length_reward,
                critic_mode="shared")
    held = _storages(tr.policy, tr.ref, tr.critic)
    assert held == _storages(tr.policy) | _storages(tr.critic.head)
    assert not _storages(tr.ref) - _storages(tr.policy)  # the reference is a view of the policy
    full_held = _storages(full.policy, full.ref, full.critic)
    assert len(full_held) == 2 * len(_storages(full.policy)) + 2  # control: the copied reference doubles them
    base = {id(p) for n, p in tr.policy.named_parameters() if "lora_" not in n}
    assert len(_storages(tr.policy)) - len(base) == sum(1 for n, _ in tr.policy.named_parameters() if "lora_" in n)


def test_lora_final_is_an_adapter_run_that_eval_and_doctor_load(tmp_path, gpt2_tok, make_llama):
    """final/ holds the adapter (and merged/ with merge_on_save); `tether eval`'s loader gives the in-memory
    policy's log-probs and scores exactly, the merged model matches to 1e-5, and `tether doctor` runs on it."""
    from transformers import AutoModelForCausalLM

    from tether.doctor import run_checks
    from tether.eval.compare import _load, evaluate_policies, sample_and_score
    from tether.eval.judges import get_judge

    base_dir = tmp_path / "base"
    model = make_llama(len(gpt2_tok) + 1)
    model.save_pretrained(base_dir)
    gpt2_tok.save_pretrained(base_dir)
    cfg = dict(output_dir=str(tmp_path / "run"), rollout_batch_size=8, micro_batch_size=4, response_length=8,
               num_updates=1, num_ppo_epochs=1, progress=False, sample_every=0, seed=0, monitor=QUIET, lr=1e-2,
               policy=str(base_dir), policy_lora={**LORA, "merge_on_save": True})
    from tether.algos.ppo_trainer import PPOTrainer

    tr = PPOTrainer(PPOConfig(**cfg), reward=length_reward, prompts=PROMPTS)
    tr.train()
    final = tmp_path / "run" / "final"
    assert is_adapter_run(final) and not (final / "model.safetensors").exists()
    assert (final / "merged" / "model.safetensors").is_file() and (final / "tether_config.yaml").is_file()
    card = (final / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card
    loaded, tok = _load(str(final), progress=False)
    ids, mask = _inputs(tr.tokenizer)
    with torch.no_grad():
        want = response_logprobs(tr.policy, ids, mask, 2, 1.0, 2)
        assert torch.equal(response_logprobs(loaded, ids, mask, 2, 1.0, 2), want)
        merged = AutoModelForCausalLM.from_pretrained(final / "merged").eval()
        torch.testing.assert_close(response_logprobs(merged, ids, mask, 2, 1.0, 2), want, atol=1e-5, rtol=0)
    kw = dict(response_length=6, max_prompt_length=16, micro_batch_size=4, seed=0)
    got = evaluate_policies({"lora": str(final)}, PROMPTS[:4], ["vader"], None, str(base_dir), temperature=0.7,
                            progress=False, **kw)["samples"]["lora"]
    ref_model, ref_tok = _load(str(base_dir), progress=False)
    mem = sample_and_score(tr.policy.eval(), ref_tok, ref_model, PROMPTS[:4], temperature=0.7, **kw)
    vader = get_judge("vader")([r["completion"] for r in mem])
    assert [(r["completion"], r["kl"], r["ref_nll"]) for r in got] == [
        (r["completion"], r["kl"], r["ref_nll"]) for r in mem]
    assert [r["vader"] for r in got] == [float(v) for v in vader]
    peft_model, _ = load_adapter_run(final)
    assert peft_model.get_base_model() is not None
    results = run_checks(build(PPOConfig, {"policy": str(final), "rewards": [], "prompts": None}),
                         reward=length_reward, prompts=PROMPTS, checks=("pad_token", "padding", "memory"))
    assert results and all(r.status != "fail" for r in results)
    with pytest.raises(ConfigError, match="carries a LoRA adapter"):
        PPOTrainer(PPOConfig(**{**cfg, "output_dir": str(tmp_path / "again"), "policy": str(final)}),
                   reward=length_reward, prompts=PROMPTS)


def test_critic_lora_trains_only_its_adapter_and_head(tmp_path, gpt2_tok, make_llama):
    """critic_lora: the separate critic's trunk base stays frozen, its adapter and head move; the policy (full
    fine-tuning here) is untouched by it."""
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), length_reward, critic_lora=LORA, critic_lr=1e-2,
              critic_mode="separate")
    trainable = {n for n, p in tr.critic.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in tr.critic.named_parameters()}
    tr.step()
    changed = {n for n, p in tr.critic.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any(n.startswith("head.") for n in changed)
    out = tr.save(tmp_path / "saved")
    assert is_adapter_run(out / "critic") and (out / "critic" / "value_head.safetensors").is_file()


@pytest.mark.parametrize("bad, message", [
    ({"policy_lora": {"dropout": 0.1}}, "policy_lora.dropout=0.1: PPO needs 0"),
    ({"policy_lora": {}, "reference": "ref"}, "reference: cannot be used with policy_lora"),
    ({"critic_lora": {}, "critic_mode": "shared"}, "critic_lora: needs critic_mode=separate"),
    ({"critic_lora": {}, "critic_mode": "separate", "advantage": "grpo", "samples_per_prompt": 2},
     "critic_lora: advantage=grpo uses no critic"),
    ({"micro_batch_size": 0}, "micro_batch_size: must be a positive integer or auto"),
])
def test_lora_and_memory_options_refused_in_one_line(bad, message):
    with pytest.raises(ConfigError) as err:
        build(PPOConfig, bad)
    assert message in str(err.value) and "\n" not in str(err.value)
