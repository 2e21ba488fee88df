"""The README's Python snippet runs as shown (with a tiny random model standing in for SmolLM2)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_api_snippet():
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert blocks and "PPOTrainer(" in blocks[0] and "trainer.train()" in blocks[0]


def test_readme_snippet_runs(tmp_path, monkeypatch, capsys, _gpt2_tokenizer_proto):
    from conftest import tiny_llama

    import tether.assets.smollm2 as smollm2

    tok = copy.deepcopy(_gpt2_tokenizer_proto)
    model_dir = tmp_path / "tiny-policy"
    tiny_llama(len(tok) + 1).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    monkeypatch.setattr(smollm2, "smollm2_path", lambda progress=True: model_dir)
    monkeypatch.chdir(tmp_path)

    snippet = _python_blocks(README.read_text(encoding="utf-8"))[0]
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme_snippet"})

    score, kl = (float(x) for x in capsys.readouterr().out.split())
    assert score < 0 and kl == pytest.approx(0.0, abs=1e-5)  # brevity reward; the first rollout is the reference's
    out = tmp_path / "runs" / "readme-ppo"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in lines] == [1, 2, 3]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tether_config.yaml").is_file()
