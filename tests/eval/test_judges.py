"""The independent sentiment judges: offline, one float per text, positive above negative."""

import math
import sys

import pytest

from tether.assets.cache import AssetError
from tether.eval.judges import JUDGES, AfinnJudge, Judge, get_judge

POSITIVE = "What a wonderful, brilliant and moving film. I loved it!"
NEGATIVE = "A dull, boring and awful mess. I hated every minute."
NEUTRAL = "The film is ninety minutes long."


@pytest.mark.parametrize("name", ["vader", "textblob", "afinn"])
def test_judge_orders_sentiment(name):
    judge = get_judge(name)
    assert isinstance(judge, Judge) and judge.name == name
    scores = judge([POSITIVE, NEGATIVE, NEUTRAL, ""])
    assert len(scores) == 4 and all(type(s) is float and math.isfinite(s) for s in scores)
    assert scores[0] > scores[2] > scores[1]
    assert scores[3] == 0.0
    assert judge([]) == []
    assert judge([POSITIVE]) == scores[:1]  # deterministic, independent of the batch


@pytest.mark.parametrize("name", ["vader", "textblob"])
def test_bounded_judges(name):
    scores = get_judge(name)([POSITIVE * 5, NEGATIVE * 5, "good " * 50])
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_afinn_normalisation():
    per_word, per_text = AfinnJudge(), get_judge("afinn", per="text")
    assert per_word(["good"]) == [3.0]
    assert per_word(["good movie"]) == [1.5]  # AFINN valence of "good" is 3, over 2 words
    assert per_text(["good movie", "good good bad"]) == [3.0, 3.0]
    assert per_word(["!!!"]) == [0.0]  # no words: no division by zero
    with pytest.raises(ValueError, match="per must be"):
        AfinnJudge(per="sentence")


def test_judges_reject_a_bare_string():
    with pytest.raises(TypeError, match="list of texts"):
        get_judge("vader")("not a list")
    with pytest.raises(TypeError, match="strings"):
        get_judge("afinn")([1.0])


def test_unknown_judge():
    with pytest.raises(ValueError, match="unknown judge 'bert': choose from vader, textblob, afinn"):
        get_judge("bert")
    assert sorted(JUDGES) == ["afinn", "textblob", "vader"]


@pytest.mark.parametrize("name, module, dist", [
    ("vader", "vaderSentiment.vaderSentiment", "vaderSentiment==3.3.2"),
    ("textblob", "textblob", "textblob==0.20.1"),
    ("afinn", "afinn", "afinn==0.1"),
])
def test_missing_package_is_a_one_line_error(monkeypatch, name, module, dist):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(AssetError) as err:
        get_judge(name)
    assert str(err.value) == f"package {dist} is not installed: run `pip install {dist}`"
