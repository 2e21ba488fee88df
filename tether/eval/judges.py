"""Independent sentiment judges: lexicon scorers made outside this project, used to score generated text.

A judge maps a list of texts to one float per text (higher = more positive). All work offline:

* ``vader``: VADER compound score in [-1, 1] (``vaderSentiment``). The demo's training gold, so it can be gamed.
* ``textblob``: TextBlob polarity in [-1, 1] (Pattern lexicon). Only ``.sentiment`` is used: the rest of
  TextBlob needs NLTK corpora that are not installed.
* ``afinn``: AFINN-165 valence per word: the sum of matched valences (-5..5 each; phrases such as
  "not good" count as one match) divided by the number of word tokens (``\\w+``); 0 for a text with no
  words. Per word, so longer texts are not favoured; ``per="text"`` gives the raw sum instead.

``get_judge(name)`` builds one; a missing package raises ``AssetError`` with the pip command.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tether.assets.cache import AssetError


@runtime_checkable
class Judge(Protocol):
    name: str

    def __call__(self, texts: Sequence[str]) -> list[float]: ...


def _require(module: str, dist: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AssetError(f"package {dist} is not installed: run `pip install {dist}`") from None


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("a judge takes a list of texts, not one string")
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"a judge takes strings, got {type(t).__name__}")
    return texts


class VaderJudge:
    name = "vader"

    def __init__(self):
        module = _require("vaderSentiment.vaderSentiment", "vaderSentiment==3.3.2")
        self._analyzer = module.SentimentIntensityAnalyzer()

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(t)["compound"]) for t in _check_texts(texts)]


class TextBlobJudge:
    name = "textblob"

    def __init__(self):
        self._blob = _require("textblob", "textblob==0.20.1").TextBlob

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [float(self._blob(t).sentiment.polarity) for t in _check_texts(texts)]


class AfinnJudge:
    name = "afinn"

    def __init__(self, per: str = "word"):
        if per not in ("word", "text"):
            raise ValueError(f"per must be 'word' or 'text', got {per!r}")
        self.per = per
        self._afinn = _require("afinn", "afinn==0.1").Afinn(language="en")

    def __call__(self, texts: Sequence[str]) -> list[float]:
        out = []
        for t in _check_texts(texts):
            total = float(self._afinn.score(t))
            if self.per == "word":
                total = total / max(1, len(self._afinn.split(t)))
            out.append(total)
        return out


JUDGES = {"vader": VaderJudge, "textblob": TextBlobJudge, "afinn": AfinnJudge}


def get_judge(name: str, **kwargs) -> Judge:
    """A judge by name: ``vader``, ``textblob`` or ``afinn`` (keyword arguments go to its constructor)."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}: choose from {', '.join(JUDGES)}")
    return JUDGES[name](**kwargs)
