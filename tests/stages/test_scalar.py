"""sequence_scores: read at the last real token, unchanged by padding on either side, for decoders and encoders;
fold_score_affine: the saved model outputs the affinely mapped score."""

from __future__ import annotations

import pytest
import torch
from _tiny import bert_rm, gpt2_rm, gpt2_tok, llama_rm, minilm_tok

from tether.data.preferences import encode_for_reward, encode_for_reward_model
from tether.models.scalar import (
    OFFSET_ATTR,
    fold_score_affine,
    is_decoder_scorer,
    last_token_index,
    reward_input_style,
    sequence_scores,
)

TEXTS = [("Review of the film:", " A truly great film."), ("Hi", " ok"), ("Tell me a story about a cat.", " No.")]


def _models():
    tok = gpt2_tok()
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    return {
        "gpt2": (gpt2_rm(len(tok), seed=1, pad_token_id=tok.pad_token_id), tok),
        "llama": (llama_rm(len(tok), seed=2, pad_token_id=tok.pad_token_id), tok),
        "bert": (bert_rm(seed=3, init_range=0.5), minilm_tok()),  # wide init: rows score apart
    }


MODELS = _models()


def _pad(seqs, pad_id, left, right):
    """Each row padded with `left[i]` pads before and enough pads after to reach a common length + `right`."""
    width = max(l + len(s) for l, s in zip(left, seqs)) + right
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (l, s) in enumerate(zip(left, seqs)):
        ids[i, l : l + len(s)] = torch.tensor(s)
        mask[i, l : l + len(s)] = 1
    return ids, mask


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_score_is_unchanged_by_left_and_right_padding(name):
    model, tok = MODELS[name]
    model.eval()
    style = reward_input_style(model)
    assert style == ("encoder" if name == "bert" else "decoder")
    seqs = [encode_for_reward(tok, p, c, style=style, max_length=64) for p, c in TEXTS]
    with torch.no_grad():
        alone = torch.stack([sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
                             for s in seqs])
        for left, right in [((0, 0, 0), 5), ((3, 0, 7), 0), ((2, 5, 1), 4)]:
            ids, mask = _pad(seqs, tok.pad_token_id, left, right)
            got = sequence_scores(model, ids, mask)
            assert got.dtype == torch.float32 and got.shape == (3,)
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    assert alone.std() > 1e-3  # the rows really score differently, so equality above is not vacuous


def test_decoder_score_is_the_head_at_the_last_real_token():
    model, tok = MODELS["gpt2"]
    model.eval()
    seq = encode_for_reward(tok, *TEXTS[0], style="decoder", max_length=64)
    assert seq[-1] == tok.eos_token_id and seq.count(tok.eos_token_id) == 1
    ids = torch.tensor([seq])
    with torch.no_grad():
        per_position = model(input_ids=ids).logits  # HF forward on an unpadded row: (1, 1) read at the last token
        hidden = model.transformer(input_ids=ids).last_hidden_state
        every = model.score(hidden)[0, :, 0]
        got = sequence_scores(model, ids, torch.ones_like(ids))
    torch.testing.assert_close(got[0], every[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[0], per_position[0, 0], atol=1e-6, rtol=0)
    assert (every[:-1] - every[-1]).abs().min() > 1e-4  # any other position would give another value
    # right padding whose pad id is the EOS id: the mask, not a pad-id search, finds the last real token
    ids2, mask2 = _pad([seq, seq[:-3] + [tok.eos_token_id]], tok.eos_token_id, (0, 0), 3)
    with torch.no_grad():
        assert torch.allclose(sequence_scores(model, ids2, mask2)[0], got[0], atol=1e-6)


def test_last_token_index_and_empty_rows():
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]
    model, _ = MODELS["gpt2"]
    with pytest.raises(ValueError, match="at least one real token"):
        sequence_scores(model, torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_style_detection_and_batch_encoding():
    gpt2, tok = MODELS["gpt2"]
    bert, btok = MODELS["bert"]
    assert is_decoder_scorer(gpt2) and is_decoder_scorer(MODELS["llama"][0]) and not is_decoder_scorer(bert)
    ids, mask = encode_for_reward_model(btok, ["A prompt"], [" an answer"], max_length=32)
    assert ids[0].tolist() == btok("A prompt", " an answer")["input_ids"]  # [CLS] p [SEP] c [SEP]
    ids, mask = encode_for_reward_model(tok, ["A prompt", "B"], [" an answer", " x"], max_length=32)
    assert ids[0, mask[0].sum() - 1] == tok.eos_token_id and ids[1, mask[1].sum() - 1] == tok.eos_token_id
    assert (ids[1, mask[1].sum():] == tok.pad_token_id).all()
    # too long: the prompt loses tokens on its left, the EOS stays last
    long = encode_for_reward(tok, "word " * 50 + "w", " the end", style="decoder", max_length=16)
    assert len(long) == 16 and long[-1] == tok.eos_token_id and long[-3:-1] == tok(" the end")["input_ids"]


@pytest.mark.parametrize("name, where", [("gpt2", "transformer.ln_f.bias"), ("llama", "config"),
                                          ("bert", "head.bias")])
def test_fold_score_affine_survives_save_and_reload(tmp_path, name, where):
    from transformers import AutoModelForSequenceClassification

    model, tok = MODELS[name]
    import copy

    model = copy.deepcopy(model).eval()
    seqs = [encode_for_reward(tok, p, c, style=reward_input_style(model), max_length=64) for p, c in TEXTS]
    ids, mask = _pad(seqs, tok.pad_token_id, (1, 0, 2), 1)
    with torch.no_grad():
        before = sequence_scores(model, ids, mask)
        assert fold_score_affine(model, scale=2.5, shift=-0.75) == where
        after = sequence_scores(model, ids, mask)
    torch.testing.assert_close(after, 2.5 * before - 0.75, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(loaded, ids, mask), after, atol=1e-6, rtol=0)
    if where != "config":  # in the weights: a plain Hugging Face forward agrees too
        assert getattr(loaded.config, OFFSET_ATTR, 0.0) == 0.0
        one = ids[1:2, : int(mask[1].sum())]
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=one).logits[0, 0], after[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        fold_score_affine(model, scale=-1.0)
