"""What counts as another config when a run directory is reused or resumed (tether.engine.run_dir.config_change)."""

from __future__ import annotations

from tether.config.base import dump
from tether.config.sft import SFTConfig
from tether.engine.run_dir import config_change


def test_a_field_missing_from_an_older_run_counts_only_when_set_away_from_its_default():
    cfg = SFTConfig(model="m", train_file="t.jsonl")
    saved = dump(cfg)
    assert config_change(saved, cfg) is None
    older = {k: v for k, v in saved.items() if k not in ("sharding", "monitor")}  # made before these fields existed
    assert config_change(older, cfg) is None
    assert config_change(older, SFTConfig(model="m", train_file="t.jsonl", sharding="fsdp")) == \
        "sharding was unset, now 'fsdp'"
    assert config_change({**saved, "lr": saved["lr"] * 2}, cfg).startswith("lr was ")
    assert config_change({**saved, "gone": 1}, cfg) == "gone was 1, now null"  # a field this version lacks
