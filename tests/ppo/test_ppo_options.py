"""Every PPOConfig option that changes the update, tested through the trainer (PPOTrainer(...).step()) with an
observable consequence: a logged metric equal to an independent computation from the sampled tokens, a bound the
documented formula implies, or a weight change that only that option can cause.

The oracles rest on two facts the trainer guarantees (ppo_details.md O1, O5): with one epoch of one minibatch the
ratio is exactly 1, so ``policy/loss`` is the aggregated ``−A``; and at the first rollout the policy is the reference,
so every KL term is 0 unless a different reference is passed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _spies import RolloutSpy, row_scores
from _trainers import PROMPTS, SCORES, lengths, make

from tether import ops
from tether.models.forward import causal_lm_logits



def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])



# ------------------------------------------------------------------------------------------------ the epoch loop


def test_target_kl_stops_after_the_minibatch_that_crossed_it(tmp_path, gpt2_tok, make_llama):
    """target_kl: the first minibatch has approx-KL exactly 0 (ratio 1) so it never stops there; the second one,
    after a step, exceeds a tiny target, and nothing runs after it. A huge target changes nothing."""
    runs = {}
    for name, target in (("off", None), ("tiny", 1e-12), ("huge", 1e9)):
        tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)),
                  name=name, num_ppo_epochs=3, num_minibatches=2, lr=1e-3, target_kl=target)
        runs[name] = tr.step()
    assert runs["off"]["train/optimizer_steps"] == 6 and runs["off"]["train/epochs_done"] == 3
    assert runs["huge"]["train/optimizer_steps"] == 6
    assert runs["tiny"]["train/optimizer_steps"] == 2 and runs["tiny"]["train/epochs_done"] == 1


def test_critic_warmup_freezes_the_policy_without_spending_its_schedule_or_beta(tmp_path, gpt2_tok, make_llama):
    """critic_warmup_updates=2 of 3 (linear schedule, adaptive β): during the warm-up the policy's weights, its
    learning-rate schedule and β stay put while the critic trains; the one policy update then runs at the full
    learning rate (not a third of it) with the initial β. lr/policy is the rate the update used (0 while frozen)."""
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)), num_updates=3,
              critic_warmup_updates=2, lr=1e-3, critic_lr=2e-3, lr_schedule="linear", kl_controller="adaptive",
              kl_coef=0.1, kl_target=6.0)
    w0, c0 = weights(tr.policy), weights(tr.critic)
    logs = [tr.step(), tr.step()]
    assert torch.equal(weights(tr.policy), w0) and not torch.equal(weights(tr.critic), c0)
    assert tr.kl_ctl.value == 0.1
    logs.append(tr.step())
    assert not torch.equal(weights(tr.policy), w0)
    assert [m["lr/policy"] for m in logs] == [0.0, 0.0, pytest.approx(1e-3)]
    assert [m["lr/critic"] for m in logs] == [pytest.approx(2e-3), pytest.approx(2e-3 * 2 / 3),
                                              pytest.approx(2e-3 / 3)]
    assert [m["objective/kl_coef"] for m in logs] == [0.1, 0.1, 0.1]
    assert tr.kl_ctl.value != 0.1  # β moves after the first update that trained the policy


def test_lr_policy_is_the_rate_the_update_used(tmp_path, gpt2_tok, make_llama):
    """lr/policy is read before the scheduler steps: a linear schedule over 2 updates logs lr, then lr/2."""
    tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)), num_updates=2,
              lr=1e-3, lr_schedule="linear")
    assert [tr.step()["lr/policy"], tr.step()["lr/policy"]] == [pytest.approx(1e-3), pytest.approx(5e-4)]


# ------------------------------------------------------------------------------------------------ KL


def _kl_setup(tmp_path, tok, make_llama, name, **overrides):
    """One prompt, one response token: per-sequence KL sums are single per-token values, so each estimator's formula
    can be checked on the logged numbers. The reference is a different random model, so the KL is not 0."""
    return make(tmp_path, copy.deepcopy(tok), make_llama(len(tok) + 1, seed=0), RolloutSpy(row_scores([0.5])),
                name=name, prompts=PROMPTS[:1], rollout_batch_size=1, micro_batch_size=1, response_length=1,
                reference=make_llama(len(tok) + 1, seed=5), **overrides)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimator_is_the_one_in_the_reward(tmp_path, gpt2_tok, make_llama, estimator):
    """objective/kl is always k1 (x = log π − log π_ref); objective/kl_penalty, the term in the reward, is the
    configured estimator of the same token: x, ½x², e^{−x} − 1 + x."""
    m = _kl_setup(tmp_path, gpt2_tok, make_llama, estimator, kl_estimator=estimator).step()
    x = m["objective/kl"]
    assert abs(x) > 1e-3
    want = {"k1": x, "k2": 0.5 * x * x, "k3": torch.expm1(torch.tensor(-x, dtype=torch.float64)).item() + x}
    assert m["objective/kl_penalty"] == pytest.approx(want[estimator], rel=1e-4, abs=1e-7)


def test_kl_log_ratio_clamp_bounds_the_penalty(tmp_path, gpt2_tok, make_llama):
    """kl_log_ratio_clamp=c: the k1 penalty in the reward is clamp(x, −c, c); objective/kl stays the raw x."""
    c = 1e-3
    m = _kl_setup(tmp_path, gpt2_tok, make_llama, "clamp", kl_log_ratio_clamp=c).step()
    assert abs(m["objective/kl"]) > 10 * c
    assert m["objective/kl_penalty"] == pytest.approx(max(-c, min(c, m["objective/kl"])), rel=1e-5)


def _exact_kl(policy, ref, ids, mask, q, temperature=0.7):
    """Full-vocabulary KL(π‖π_ref) at the response positions of fixed sequences (token mean)."""
    with torch.no_grad():
        lp = torch.log_softmax(causal_lm_logits(policy, ids, mask)[:, q - 1 : -1].double() / temperature, -1)
        lr = torch.log_softmax(causal_lm_logits(ref, ids, mask)[:, q - 1 : -1].double() / temperature, -1)
    return float((lp.exp() * (lp - lr)).sum(-1).mean())


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_kl_in_loss_pulls_the_policy_to_the_reference(tmp_path, gpt2_tok, make_llama, estimator):
    """kl_in=loss with a constant reward and RLOO: the advantages are exactly 0 and the rewards carry no KL, so the
    only gradient is β·KL-loss. It moves the policy towards the reference (the exact KL falls); with β = 0 nothing
    moves at all. At ratio 1 the logged loss equals the rollout's KL penalty per token."""
    ref = make_llama(len(gpt2_tok) + 1, seed=5).eval().requires_grad_(False)
    results = {}
    for beta in (0.0, 1.0):
        spy = RolloutSpy(row_scores([1.0]))
        tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), spy, name=f"b{beta}",
                  advantage="rloo", samples_per_prompt=2, rollout_batch_size=4, kl_in="loss", kl_estimator=estimator,
                  kl_coef=beta, lr=3e-3, max_grad_norm=None, reference=copy.deepcopy(ref))
        w0 = weights(tr.policy)
        before = copy.deepcopy(tr.policy)
        m = tr.step()
        ro = spy.rollouts[0]
        results[beta] = (m, weights(tr.policy) - w0, before, tr.policy, ro)
    m0, d0, *_ = results[0.0]
    assert float(d0.abs().max()) == 0.0  # zero advantages, no KL term: no gradient
    m1, d1, before, after, ro = results[1.0]
    assert float(d1.abs().max()) > 0
    q = ro.query_length
    am = ro.attention_mask.long()
    assert _exact_kl(after, ref, ro.query_response, am, q) < _exact_kl(before, ref, ro.query_response, am, q)
    # token-mean KL loss at ratio 1 = (Σ over sequences of the per-token penalty) / (number of tokens)
    n_tok, n_seq = float(ro.response_mask.sum()), ro.response_mask.shape[0]
    assert m1["policy/kl_loss"] == pytest.approx(m1["objective/kl_penalty"] * n_seq / n_tok, rel=1e-4)
    assert m1["policy/loss"] == 0.0 and "policy/kl_loss" not in m0


# ------------------------------------------------------------------------------------------------ rewards


def _spy_estimator(monkeypatch, name="gae"):
    seen = []
    real = ops.ADVANTAGE_ESTIMATORS[name]

    def spy(rewards, values, mask, scores, **kw):
        seen.append({"rewards": rewards.clone(), "mask": mask.clone(), "scores": scores.clone()})
        return real(rewards, values, mask, scores, **kw)

    monkeypatch.setitem(ops.ADVANTAGE_ESTIMATORS, name, spy)
    return seen


def test_whiten_rewards_gives_gae_unit_variance_rewards_with_their_mean(tmp_path, gpt2_tok, make_eos_llama,
                                                                       monkeypatch):
    """whiten_rewards: the per-token rewards GAE receives have masked variance 1 and the mean they had unwhitened
    (same seed, same rollout)."""
    seen = _spy_estimator(monkeypatch)
    for whiten in (False, True):
        make(tmp_path, copy.deepcopy(gpt2_tok), make_eos_llama(gpt2_tok, PROMPTS, 0.2), RolloutSpy(row_scores(SCORES)),
             name=f"w{whiten}", whiten_rewards=whiten).step()
    raw, white = seen
    m = raw["mask"]
    assert torch.equal(m, white["mask"])
    assert float(ops.masked_var(raw["rewards"], m)) != pytest.approx(1.0, abs=1e-2)
    assert float(ops.masked_var(white["rewards"], m)) == pytest.approx(1.0, abs=1e-4)
    assert float(ops.masked_mean(white["rewards"], m)) == pytest.approx(float(ops.masked_mean(raw["rewards"], m)),
                                                                        abs=1e-6)


@pytest.mark.parametrize("placement", ["eos", "eos+1"])
def test_score_placement_and_the_whitening_mask(tmp_path, gpt2_tok, make_eos_llama, monkeypatch, placement):
    """score_placement: the score sits at the EOS (ℓ) or at ℓ+1 when that slot exists, which the critic mask then
    includes. Advantages are whitened over the response tokens only (N+), so at ratio 1 the token-mean policy loss is
    0 in both modes (O1/H1a)."""
    seen = _spy_estimator(monkeypatch)
    spy = RolloutSpy(row_scores(SCORES))
    m = make(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, 0.3), spy, score_placement=placement,
             response_length=10).step()
    got, ro = seen[0], spy.rollouts[0]
    last = ro.response_mask.sum(1) - 1
    R = ro.response_mask.shape[1]
    early = last + 1 < R
    assert bool(early.any()), "the planted EOS model should stop some completions early"
    where = last + 1 if placement == "eos+1" else last
    where = torch.where(early, where, last)
    rows = torch.arange(len(last))
    assert torch.allclose(got["rewards"][rows, where], spy.scores[0])  # KL is 0 at the first rollout
    assert int(got["mask"].sum()) == int(ro.response_mask.sum()) + (int(early.sum()) if placement == "eos+1" else 0)
    assert abs(m["policy/loss"]) < 1e-6


@pytest.mark.parametrize("mode", ["subtract", "replace"])
def test_missing_eos_penalty(tmp_path, gpt2_tok, make_eos_llama, mode):
    """missing_eos_penalty=p: completions without EOS score s − p (subtract) or −p (replace); the raw source score is
    still logged under objective/score/<name>."""
    m = make(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, 0.15), lambda p, c: [1.0] * len(c),
             missing_eos_penalty=2.0, missing_eos_mode=mode, response_length=6).step()
    f = m["response/eos_fraction"]
    assert 0 < f < 1
    want = f * 1.0 + (1 - f) * (-1.0 if mode == "subtract" else -2.0)
    assert m["objective/score"] == pytest.approx(want, abs=1e-6)
    assert m["objective/score/<lambda>"] == pytest.approx(1.0)


def test_score_clip(tmp_path, gpt2_tok, make_llama):
    """score_clip=c: the combined score is clamped to ±c."""
    raw = [3.0, -5.0, 0.5, -0.25, 10.0, 1.0, -1.5, 0.0]
    m = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(raw)), score_clip=1.0).step()
    assert m["objective/score"] == pytest.approx(sum(max(-1.0, min(1.0, s)) for s in raw) / len(raw), abs=1e-6)


def test_reward_spec_normalize_batch(tmp_path, gpt2_tok, make_llama):
    """rewards[].normalize=batch: a source's scores are standardised over the rollout batch before weighting, so the
    combined score has mean 0 (and the weight scales it), while its raw mean is logged under its name."""
    from _spies import spaces

    specs = [{"kind": "python", "path": "_spies:spaces", "name": "sp", "normalize": "batch", "weight": 2.0}]
    spy_tr = make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), None, rewards=specs)
    seen = []
    spy_tr.rewards[0].fn = lambda p, c: seen.append(spaces(p, c)) or spaces(p, c)
    m = spy_tr.step()
    raw = torch.tensor(seen[0])
    assert float(raw.std()) > 0
    assert m["objective/score"] == pytest.approx(0.0, abs=1e-6)
    assert m["objective/score/sp"] == pytest.approx(float(raw.mean()), abs=1e-6)


# ------------------------------------------------------------------------------------------------ the policy loss


def _reinforce_pp_advantages(scores, lens):
    """REINFORCE++ with β = 0: every token of row i has the return s_i, whitened over all tokens (biased var)."""
    w = lens / lens.sum()
    mu = float((w * scores).sum())
    var = float((w * (scores - mu) ** 2).sum())
    return (scores - mu) / (var + 1e-8) ** 0.5


@pytest.mark.parametrize("mode,advantage", [("token_mean", "rloo"), ("seq_mean_token_mean", "reinforce_pp"),
                                            ("seq_mean_token_sum", "rloo"), ("seq_mean_token_sum_norm", "rloo")])
def test_loss_aggregation_modes(tmp_path, gpt2_tok, make_eos_llama, mode, advantage):
    """loss_aggregation: with per-row advantages A_i known from the scores and lengths (RLOO: R_i − R_j within a
    pair; REINFORCE++: s_i whitened over all tokens) and ratio 1, policy/loss is the documented aggregate of −A: token
    mean Σ−AL/ΣL, per-sequence mean of token means −mean(A), per-sequence token sums −mean(AL), Dr. GRPO's
    Σ−AL/(G·R). Each estimator is picked so that its mode's value is not 0 by construction."""
    spy = RolloutSpy(row_scores(SCORES))
    m = make(tmp_path, gpt2_tok, make_eos_llama(gpt2_tok, PROMPTS, 0.2), spy, advantage=advantage,
             samples_per_prompt=2 if advantage == "rloo" else 1, rollout_batch_size=4 if advantage == "rloo" else 8,
             loss_aggregation=mode, kl_coef=0.0, response_length=10).step()
    ro = spy.rollouts[0]
    L, s = lengths(ro), spy.scores[0].double()
    assert len(set(L.tolist())) > 1
    if advantage == "rloo":
        pair = s.view(-1, 2)
        A = (pair - pair.flip(1)).reshape(-1)
    else:
        A = _reinforce_pp_advantages(s, L)
    G, R = len(L), ro.response_mask.shape[1]
    want = {"token_mean": float(-(A * L).sum() / L.sum()), "seq_mean_token_mean": float(-A.mean()),
            "seq_mean_token_sum": float(-(A * L).mean()), "seq_mean_token_sum_norm": float(-(A * L).sum() / (G * R))}
    assert abs(want[mode]) > 1e-2
    assert m["policy/loss"] == pytest.approx(want[mode], abs=1e-5)


def test_clip_eps_high_unclips_the_positive_side(tmp_path, gpt2_tok, make_llama):
    """clip_eps_high: equal to clip_eps it reproduces the symmetric run exactly; very large, tokens with A > 0 are
    never clipped, so fewer tokens clip than with the symmetric clip."""
    out = {}
    for name, high in (("sym", None), ("same", 0.2), ("wide", 1e6)):
        out[name] = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1),
                         RolloutSpy(row_scores(SCORES)), name=name, advantage="rloo", samples_per_prompt=2,
                         rollout_batch_size=4, num_ppo_epochs=3, lr=2e-2, max_grad_norm=None,
                         clip_eps_high=high).step()
    assert out["same"]["policy/clipfrac"] == out["sym"]["policy/clipfrac"] > 0
    assert out["same"]["policy/loss"] == out["sym"]["policy/loss"]
    assert out["wide"]["policy/clipfrac"] < out["sym"]["policy/clipfrac"]


def _spy_policy_loss(monkeypatch):
    calls = []
    real = ops.clipped_policy_loss

    def spy(new, old, adv, mask, **kw):
        loss, stats = real(new, old, adv, mask, **kw)
        calls.append({"new": new.detach().double(), "old": old.double(), "adv": adv.double(), "mask": mask.bool(),
                      "kw": kw, "loss": float(loss.detach())})
        return loss, stats

    monkeypatch.setattr(ops, "clipped_policy_loss", spy)
    return calls


def _token_mean_pg(call, eps, dual):
    """The documented per-token clipped loss, with the dual clip min(·, −c·A) on A < 0, token-mean aggregated."""
    m, A = call["mask"], call["adv"]
    r = torch.where(m, (call["new"] - call["old"]).exp(), torch.ones_like(A))
    pg = torch.maximum(-A * r, -A * r.clamp(1 - eps, 1 + eps))
    hit = False
    if dual is not None:
        pg = torch.where(A < 0, torch.minimum(pg, -dual * A), pg)
        hit = bool(((A < 0) & (r > dual) & m).any())  # some token where the dual clip binds
    return float(torch.where(m, pg, 0.0).sum() / call["kw"]["num_tokens"]), hit


def test_dual_clip_bounds_the_negative_advantage_loss(tmp_path, gpt2_tok, make_llama, monkeypatch):
    """dual_clip=c: in the trainer's loss, a token with A < 0 contributes exactly c·|A| once its ratio exceeds c (the
    documented bound), and the policy loss of every micro-batch equals that formula recomputed from the log-probs and
    advantages the trainer used; without the option the same inputs give the unbounded (larger) loss."""
    c = 1.05
    calls = _spy_policy_loss(monkeypatch)
    make(tmp_path, gpt2_tok, make_llama(len(gpt2_tok) + 1), RolloutSpy(row_scores(SCORES)), advantage="rloo",
         samples_per_prompt=2, rollout_batch_size=4, num_ppo_epochs=3, lr=2e-2, max_grad_norm=None,
         dual_clip=c).step()
    active = 0
    for call in calls:
        assert call["kw"]["dual_clip"] == c
        with_dual, hit = _token_mean_pg(call, 0.2, c)
        assert call["loss"] == pytest.approx(with_dual, rel=1e-5, abs=1e-7)
        if hit:
            active += 1
            assert _token_mean_pg(call, 0.2, None)[0] > call["loss"] + 1e-6
    assert active, "no negative-advantage token reached ratio > c: the test would not see the dual clip"


def test_entropy_coef_raises_the_entropy(tmp_path, gpt2_tok, make_llama):
    """entropy_coef with zero advantages (constant reward, RLOO): the entropy bonus is the only gradient, so the
    policy's entropy on the sampled tokens rises after the update (policy/entropy logs it); with 0 nothing moves."""
    got = {}
    for coef in (0.0, 1.0):
        spy = RolloutSpy(row_scores([1.0]))
        tr = make(tmp_path, copy.deepcopy(gpt2_tok), make_llama(len(gpt2_tok) + 1), spy, name=f"e{coef}",
                  advantage="rloo", samples_per_prompt=2, rollout_batch_size=4, entropy_coef=coef, lr=1e-2,
                  max_grad_norm=None, kl_coef=0.0)
        before = copy.deepcopy(tr.policy)
        m = tr.step()
        got[coef] = (m, before, tr.policy, spy.rollouts[0])
    _, before0, after0, _ = got[0.0]
    assert torch.equal(weights(before0), weights(after0))
    m, before, after, ro = got[1.0]

    def entropy(model):
        with torch.no_grad():
            logits = causal_lm_logits(model, ro.query_response, ro.attention_mask.long())[:, ro.query_length - 1 : -1]
        return float(ops.masked_mean(ops.entropy_from_logits(logits, 0.7), ro.response_mask))

    assert entropy(after) > entropy(before) + 1e-3
    assert m["policy/entropy"] == pytest.approx(entropy(before), rel=1e-4)  # one step: logged before it


# ------------------------------------------------------------------------------------------------ precision


def test_dtype_bfloat16_puts_the_frozen_models_in_bf16(tmp_path, gpt2_tok, make_llama):
    """PPOConfig.dtype=bfloat16: the reference and a reward-model directory are loaded in bf16 (the policy and critic
    stay float32), and the KL at the first rollout then carries the reference's rounding instead of being exactly 0."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tether.models.load import ensure_pad_token

    tok = copy.deepcopy(gpt2_tok)
    ensure_pad_token(tok)
    rm_dir = tmp_path / "rm"
    torch.manual_seed(3)
    rm = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    out = {}
    for dtype in ("float32", "bfloat16"):
        tr = make(tmp_path, copy.deepcopy(tok), make_llama(len(tok)), str(rm_dir), name=dtype, dtype=dtype)
        assert {p.dtype for p in tr.ref.parameters()} == {getattr(torch, dtype)}
        assert {p.dtype for p in tr.rewards[0].fn.model.parameters()} == {getattr(torch, dtype)}
        assert {p.dtype for p in tr.policy.parameters()} == {p.dtype for p in tr.critic.parameters()} == {
            torch.float32}
        out[dtype] = tr.step()
    assert out["float32"]["objective/kl"] == 0.0
    assert out["bfloat16"]["objective/kl"] != 0.0 and abs(out["bfloat16"]["objective/kl"]) < 1.0
