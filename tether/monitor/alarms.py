"""Alarms over a stream of per-update metric dicts: reward hacking and broken set-ups, caught while a run is young.

Every check is a pure function of the metric history (a list of the dicts ``PPOTrainer.step`` returns, oldest first,
optionally with the ``text/*`` statistics of :func:`text_stats` merged in) and an :class:`AlarmConfig`; it returns an
:class:`Alarm` or None. :class:`AlarmChecker` keeps the history and runs them all after each update. Keys that a run
does not log (no critic, no held-out judges) simply leave their alarm silent.

====================  ============================  =============================================================
alarm                 metric                        fires when
====================  ============================  =============================================================
length_hacking        response/length_mean          |corr(length, score)| ≥ length_corr over the window and the
                                                    length moved by ≥ length_drift (relative)
repetition            text/repeat_ngram_share       ≥ repetition_max
dominant_token        text/top_token_share          ≥ token_share_max
one_answer            text/distinct_share           < distinct_min
entropy_collapse      objective/entropy per token   < entropy_ratio_min × its value at the start
kl_high               objective/kl                  > kl_max
kl_negative           objective/kl (window mean)    < −kl_negative_tol
clipfrac_high         policy/clipfrac               > clipfrac_max
approx_kl_high        policy/approx_kl              > approx_kl_max
value_not_learning    value/explained_variance      ≤ explained_variance_min for explained_variance_patience updates
judge_falling         eval/<judge>                  best − last ≥ judge_drop while the proxy rose
logprob_mismatch      rollout/logprob_mismatch_max  > logprob_mismatch_max (default by precision)
ratio_not_one         policy/first_minibatch_       > ratio_dev_max (default by precision)
                      ratio_dev
====================  ============================  =============================================================
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from tether.config.monitor import AlarmConfig
from tether.errors import TrainingError

#: ``eval/<name>`` keys that are not judges (written by :class:`tether.eval.heldout.HeldOutEvaluator`).
EVAL_RESERVED = {"proxy", "kl", "sqrt_kl", "length_mean", "eos_fraction", "n"}

REMEDIES: dict[str, str] = {
    "length_hacking": "the reward pays for length: raise kl_coef, add a length penalty or normalise the reward "
                      "for length, or set missing_eos_penalty",
    "repetition": "completions repeat themselves: raise kl_coef, lower lr, check the reward model on repeated text",
    "dominant_token": "one token floods the completions (e.g. '!!!!'): the reward is being gamed; raise kl_coef, "
                      "add the pattern to the reward model's negatives",
    "one_answer": "the policy collapsed to one answer: raise kl_coef, lower lr, or add entropy_coef",
    "entropy_collapse": "the policy is locking onto one answer: raise kl_coef, lower lr, or add entropy_coef",
    "kl_high": "the policy drifted far from the reference: raise kl_coef or use kl_controller: adaptive",
    "kl_negative": "sampling and scoring disagree (temperature, padding, top-k/top-p): run `tether doctor`",
    "clipfrac_high": "steps are too large: lower lr, set target_kl, or use fewer num_ppo_epochs",
    "approx_kl_high": "steps are too large: lower lr, set target_kl, or use fewer num_ppo_epochs",
    "value_not_learning": "the critic is not learning: check the reward scale, raise critic_lr, or add "
                          "critic_warmup_updates",
    "judge_falling": "over-optimisation: the proxy reward rises while a held-out judge falls; raise kl_coef, "
                     "stop earlier, or keep the best checkpoint",
    "logprob_mismatch": "the sampler does not draw from softmax(logits/T) as the loss assumes (a logits processor, "
                        "a temperature or padding difference): run `tether doctor`",
    "ratio_not_one": "old and new log-probs come from different computations (dropout, padding, position ids, "
                     "temperature): the PPO ratio is wrong from the first step; run `tether doctor`",
}

# The config field holding each alarm's threshold (for the docs and the report).
THRESHOLD_FIELDS: dict[str, str] = {
    "length_hacking": "length_corr (and length_drift)",
    "repetition": "repetition_max",
    "dominant_token": "token_share_max",
    "one_answer": "distinct_min",
    "entropy_collapse": "entropy_ratio_min",
    "kl_high": "kl_max",
    "kl_negative": "kl_negative_tol",
    "clipfrac_high": "clipfrac_max",
    "approx_kl_high": "approx_kl_max",
    "value_not_learning": "explained_variance_min (and explained_variance_patience)",
    "judge_falling": "judge_drop",
    "logprob_mismatch": "logprob_mismatch_max",
    "ratio_not_one": "ratio_dev_max",
}


@dataclass(frozen=True)
class Alarm:
    """One fired alarm: what was measured, the value, the threshold it crossed and the usual remedy."""

    name: str
    metric: str
    value: float
    threshold: float
    remedy: str
    update: Optional[int] = None
    detail: str = ""

    @property
    def message(self) -> str:
        """One line: ``name: metric = value (threshold t) [detail]; remedy``."""
        extra = f", {self.detail}" if self.detail else ""
        at = f"update {self.update}: " if self.update is not None else ""
        return (f"{at}{self.name}: {self.metric} = {_fmt(self.value)} (threshold {_fmt(self.threshold)}{extra}); "
                f"{self.remedy}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _alarm(name: str, metric: str, value: float, threshold: float, history: Sequence[Mapping], detail: str = ""):
    return Alarm(name, metric, float(value), float(threshold), REMEDIES[name], update_of(history, len(history) - 1),
                 detail)


def update_of(history: Sequence[Mapping], i: int) -> Optional[int]:
    """The update number of record ``i`` (its ``update`` or ``step`` key, else its 1-based position)."""
    if not history:
        return None
    rec = history[i]
    for key in ("update", "step"):
        v = rec.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return int(v)
    return (i if i >= 0 else len(history) + i) + 1


def _num(rec: Mapping, key: str) -> Optional[float]:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def series(history: Sequence[Mapping], key: str) -> list[float]:
    """The finite values of ``key`` in order, skipping records that lack it."""
    return [v for v in (_num(r, key) for r in history) if v is not None]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant or there are fewer than 3 points."""
    n = len(x)
    if n < 3 or n != len(y):
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 1e-12 * max(1.0, mx * mx) * n or syy <= 1e-12 * max(1.0, my * my) * n:
        return 0.0
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sxx * syy)


# ------------------------------------------------------------------------------------------------ text statistics

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (``"Great!!"`` → ``["great", "!", "!"]``)."""
    return _TOKEN.findall(text.lower())


def text_stats(completions: Sequence[str], n: int = 3) -> dict[str, Any]:
    """Degeneration statistics of a batch of completions, as ``text/*`` metrics.

    ``text/repeat_ngram_share``: mean over completions with ≥ n tokens of 1 − distinct n-grams / n-grams;
    ``text/top_token_share``: share of the most frequent token among all tokens (``text/top_token`` names it);
    ``text/distinct_share``: distinct completions / completions; ``text/n``: completions counted.
    """
    comps = [c for c in completions if isinstance(c, str)]
    out: dict[str, Any] = {"text/n": float(len(comps))}
    if not comps:
        return out
    shares = []
    counts: Counter = Counter()
    for c in comps:
        toks = words(c)
        counts.update(toks)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        if grams:
            shares.append(1.0 - len(set(grams)) / len(grams))
    out["text/repeat_ngram_share"] = sum(shares) / len(shares) if shares else 0.0
    total = sum(counts.values())
    if total:
        tok, k = counts.most_common(1)[0]
        out["text/top_token_share"] = k / total
        out["text/top_token"] = tok
        out["text/tokens"] = float(total)
    out["text/distinct_share"] = len(set(c.strip() for c in comps)) / len(comps)
    return out


# ------------------------------------------------------------------------------------------------ the checks


def check_length_hacking(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    pts = [(_num(r, "response/length_mean"), _num(r, "objective/score")) for r in history]
    pts = [(a, b) for a, b in pts if a is not None and b is not None][-cfg.window :]
    if len(pts) < cfg.window:
        return None
    lengths, scores = [a for a, _ in pts], [b for _, b in pts]
    corr = pearson(lengths, scores)
    third = max(1, len(lengths) // 3)
    start, end = sum(lengths[:third]) / third, sum(lengths[-third:]) / third
    drift = abs(end - start) / max(abs(start), 1.0)
    if abs(corr) >= cfg.length_corr and drift >= cfg.length_drift:
        return _alarm("length_hacking", "response/length_mean", corr, cfg.length_corr, history,
                      f"corr with objective/score over {len(pts)} updates; length {start:.1f} → {end:.1f}")
    return None


def check_repetition(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    v = _num(history[-1], "text/repeat_ngram_share") if history else None
    if v is not None and v >= cfg.repetition_max:
        return _alarm("repetition", "text/repeat_ngram_share", v, cfg.repetition_max, history,
                      f"{cfg.ngram}-grams")
    return None


def check_dominant_token(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    if not history:
        return None
    rec = history[-1]
    v, total = _num(rec, "text/top_token_share"), _num(rec, "text/tokens") or 0.0
    if v is not None and total >= 20 and v >= cfg.token_share_max:
        return _alarm("dominant_token", "text/top_token_share", v, cfg.token_share_max, history,
                      f"token {rec.get('text/top_token')!r}")
    return None


def check_one_answer(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    if not history:
        return None
    v, n = _num(history[-1], "text/distinct_share"), _num(history[-1], "text/n") or 0.0
    if v is not None and n >= 4 and v < cfg.distinct_min:
        return _alarm("one_answer", "text/distinct_share", v, cfg.distinct_min, history, f"{int(n)} completions")
    return None


def _per_token_entropy(rec: Mapping) -> Optional[float]:
    ent, length = _num(rec, "objective/entropy"), _num(rec, "response/length_mean")
    if ent is None or length is None or length <= 0:
        return None
    return ent / length


def check_entropy_collapse(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    vals = [v for v in (_per_token_entropy(r) for r in history) if v is not None]
    if len(vals) < 4:
        return None
    k = min(3, len(vals) // 2)
    base, now = sum(vals[:k]) / k, sum(vals[-k:]) / k
    if base > 0 and now < cfg.entropy_ratio_min * base:
        return _alarm("entropy_collapse", "objective/entropy per token", now / base, cfg.entropy_ratio_min, history,
                      f"{base:.3g} → {now:.3g} nats/token")
    return None


def check_kl_high(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    v = _num(history[-1], "objective/kl") if history else None
    if v is not None and v > cfg.kl_max:
        return _alarm("kl_high", "objective/kl", v, cfg.kl_max, history)
    return None


def check_kl_negative(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    vals = series(history, "objective/kl")[-cfg.window :]
    if len(vals) < 3:
        return None
    mean = sum(vals) / len(vals)
    if mean < -cfg.kl_negative_tol:
        return _alarm("kl_negative", "objective/kl", mean, -cfg.kl_negative_tol, history,
                      f"mean of the last {len(vals)} updates")
    return None


def check_clipfrac(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    v = _num(history[-1], "policy/clipfrac") if history else None
    if v is not None and v > cfg.clipfrac_max:
        return _alarm("clipfrac_high", "policy/clipfrac", v, cfg.clipfrac_max, history)
    return None


def check_approx_kl(history: Sequence[Mapping], cfg: AlarmConfig) -> Optional[Alarm]:
    v = _num(history[-1], "policy/approx_kl") if history else None
    if v is not None and v > cfg.approx_kl_max:
        return _alarm("approx_kl_high", "policy/approx_kl", v, cfg.approx_kl_max, history)
    return None


def check_explained_variance(history: Sequence[Mapping], cfg: AlarmConfig,
                             critic_warmup_updates: int = 0) -> Optional[Alarm]:
    start = critic_warmup_updates + cfg.explained_variance_patience
    pts = [(update_of(history, i), _num(r, "value/explained_variance")) for i, r in enumerate(history)]
    pts = [(u, v) for u, v in pts if v is not None and u is not None and u > start]
    last = pts[-cfg.explained_variance_patience :]
    if len(last) == cfg.explained_variance_patience and all(v <= cfg.explained_variance_min for _, v in last):
        return _alarm("value_not_learning", "value/explained_variance", last[-1][1], cfg.explained_variance_min,
                      history, f"{len(last)} updates in a row after update {start}")
    return None


def judge_keys(history: Sequence[Mapping]) -> list[str]:
    """The ``eval/<judge>`` keys present in ``history`` (not the proxy, KL or length of the held-out set)."""
    keys: dict[str, None] = {}
    for r in history:
        for k in r:
            if k.startswith("eval/") and "/" not in k[5:] and k[5:] not in EVAL_RESERVED and _num(r, k) is not None:
                keys[k] = None
    return list(keys)


def check_judges(history: Sequence[Mapping], cfg: AlarmConfig) -> list[Alarm]:
    """One ``judge_falling`` alarm per judge now ``judge_drop`` below its best while the proxy is above its value
    at that best evaluation. The proxy is ``eval/proxy`` (held-out proxy reward) when logged, else
    ``objective/score``."""
    out = []
    for key in judge_keys(history):
        pts = []
        for r in history:
            j = _num(r, key)
            p = _num(r, "eval/proxy")
            p = _num(r, "objective/score") if p is None else p
            if j is not None and p is not None:
                pts.append((j, p))
        if len(pts) < 2:
            continue
        best = max(range(len(pts) - 1), key=lambda i: pts[i][0])
        drop = pts[best][0] - pts[-1][0]
        if drop >= cfg.judge_drop and drop > 0 and pts[-1][1] > pts[best][1]:
            out.append(_alarm("judge_falling", key, pts[-1][0], pts[best][0] - cfg.judge_drop, history,
                              f"best {pts[best][0]:.3g}, proxy {pts[best][1]:.3g} → {pts[-1][1]:.3g}"))
    return out


def check_logprob_consistency(history: Sequence[Mapping], cfg: AlarmConfig, autocast: str = "none") -> list[Alarm]:
    """``logprob_mismatch`` and ``ratio_not_one`` on the latest record, with the tolerances of the run's precision
    (:meth:`AlarmConfig.logprob_tolerances`). Updates of a critic warm-up log a ratio too (the policy is not stepped
    but its first minibatch is still scored), so both apply to every update."""
    if not history:
        return []
    mismatch_tol, ratio_tol = cfg.logprob_tolerances(autocast)
    out = []
    v = _num(history[-1], "rollout/logprob_mismatch_max")
    if v is not None and v > mismatch_tol:
        out.append(_alarm("logprob_mismatch", "rollout/logprob_mismatch_max", v, mismatch_tol, history,
                          f"forwards in {'bfloat16 autocast' if autocast != 'none' else 'float32'}"))
    v = _num(history[-1], "policy/first_minibatch_ratio_dev")
    if v is not None and v > ratio_tol:
        out.append(_alarm("ratio_not_one", "policy/first_minibatch_ratio_dev", v, ratio_tol, history,
                          f"forwards in {'bfloat16 autocast' if autocast != 'none' else 'float32'}"))
    return out


CHECKS: tuple[Callable[[Sequence[Mapping], AlarmConfig], Optional[Alarm]], ...] = (
    check_length_hacking, check_repetition, check_dominant_token, check_one_answer, check_entropy_collapse,
    check_kl_high, check_kl_negative, check_clipfrac, check_approx_kl,
)


def check_all(history: Sequence[Mapping], cfg: Optional[AlarmConfig] = None,
              critic_warmup_updates: int = 0, autocast: str = "none") -> list[Alarm]:
    """Every alarm firing on the latest record of ``history``; ``autocast``: the run's ``autocast`` setting, which
    sets the default tolerances of the log-prob consistency alarms."""
    cfg = cfg or AlarmConfig()
    if not history:
        return []
    found = [a for a in (check(history, cfg) for check in CHECKS) if a is not None]
    ev = check_explained_variance(history, cfg, critic_warmup_updates)
    if ev is not None:
        found.append(ev)
    found.extend(check_judges(history, cfg))
    found.extend(check_logprob_consistency(history, cfg, autocast))
    return found


class AlarmError(TrainingError):
    """Raised by a fatal alarm (``alarms.fatal: true``): training stopped. One line, the alarm's message; exit 3."""


class AlarmChecker:
    """Keeps the metric history of a run and checks every alarm after each update.

    ``check(metrics, completions)`` merges the :func:`text_stats` of ``completions`` (if given) into a copy of
    ``metrics``, appends it to the history and returns the alarms firing now. ``new`` (after a check) holds those that
    were not firing at the previous update, so a caller can warn once per episode of an alarm.
    """

    def __init__(self, config: Optional[AlarmConfig] = None, critic_warmup_updates: int = 0,
                 autocast: str = "none"):
        self.cfg = config or AlarmConfig()
        self.critic_warmup_updates = critic_warmup_updates
        self.autocast = autocast
        self.history: list[dict[str, Any]] = []
        self.active: set[tuple[str, str]] = set()
        self.new: list[Alarm] = []
        self.fired: list[Alarm] = []

    def observe(self, metrics: Mapping[str, Any], completions: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Append the record (with text statistics) to the history without checking; returns the record."""
        rec = dict(metrics)
        if completions is not None:
            rec.update(text_stats(completions, self.cfg.ngram))
        self.history.append(rec)
        return rec

    def check(self, metrics: Mapping[str, Any], completions: Optional[Sequence[str]] = None) -> list[Alarm]:
        self.observe(metrics, completions)
        if not self.cfg.enabled:
            self.new = []
            return []
        now = check_all(self.history, self.cfg, self.critic_warmup_updates, self.autocast)
        keys = {(a.name, a.metric) for a in now}
        self.new = [a for a in now if (a.name, a.metric) not in self.active]
        self.active = keys
        self.fired.extend(now)
        if now and self.cfg.fatal:
            raise AlarmError(f"alarm (fatal: alarms.fatal=true) {now[0].message}")
        return now


def replay(records: Sequence[Mapping], cfg: Optional[AlarmConfig] = None, critic_warmup_updates: int = 0,
           completions: Optional[Mapping[int, Sequence[str]]] = None) -> list[Alarm]:
    """Run the alarms over a finished run's metric records (e.g. ``metrics.jsonl``); ``completions`` maps an update
    number to its sampled completions (``samples.jsonl``). Returns every alarm fired, in order."""
    checker = AlarmChecker((cfg or AlarmConfig()).model_copy(update={"fatal": False}), critic_warmup_updates)
    for i, rec in enumerate(records):
        comps = None
        if completions is not None and not any(k.startswith("text/") for k in rec):
            comps = completions.get(update_of(records, i) or -1)
        checker.check(rec, comps)
    return checker.fired
