"""The import rule: tether's layers point one way. Every import of a tether module, at the top of a file or inside a
function body, must go to the same layer or a lower one (docs/layout.md). The order is declared once, here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tether"

LAYERS: list[tuple[str, ...]] = [
    ("tether.errors", "tether.console", "tether.records", "tether.hub"),     # 0 base: errors, messages, records, hub cache
    ("tether.ops", "tether.config", "tether.assets", "tether.plan"),          # 1 pure math, config, assets, planner
    ("tether.engine", "tether.data", "tether.models"),                        # 2 run-keeping, data, models
    ("tether.rollout", "tether.rewards", "tether.eval.judges"),               # 3 sampling and scoring
    ("tether.eval.heldout", "tether.eval.stats", "tether.monitor"),           # 4 evaluation pieces, the monitor
    ("tether.algos.batching", "tether.algos.common", "tether.algos.offline",  # 5 what trainers share: the loader
     "tether.algos.parts", "tether.algos.ppo"),
    ("tether.doctor",),                                                       # 6 pre-flight checks
    ("tether.monitor.hooks", "tether.algos"),                                 # 7 the trainers
    ("tether.eval", "tether.pipeline", "tether.demo", "tether.compare"),      # 8 whole workflows
    ("tether.cli", "tether.__main__", "tether"),                              # 9 the command line, the package
]


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest declared prefix."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    if found is None:
        raise AssertionError(f"{module}: not in any layer of tests/test_layers.py; declare it")
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tether_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every tether import in ``path``, anywhere in the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every tether import in ``source`` (a module of ``package``), function bodies too."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tether"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "tether":
                continue
            for a in node.names:  # `from tether import ops` imports the module tether.ops
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file()
                            or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else base))
    return out


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in FILES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_no_import_points_up(path):
    me = module_name(path)
    mine = layer_of(me)
    up = [f"{path.relative_to(PACKAGE.parent)}:{line}: {me} (layer {mine}) imports {target} (layer {layer_of(target)})"
          for line, target in tether_imports(path) if layer_of(target) > mine]
    assert not up, "\n".join(up)


def test_the_rule_catches_an_upward_import():
    """Negative control: base code importing a trainer and the CLI inside a function body is flagged, a relative
    import is resolved, and a same-layer import is not."""
    source = ("def f():\n    from tether.algos.ppo_trainer import PPOTrainer\n    import tether.cli\n"
              "from . import masking\nfrom tether import ops\n")
    found = imports_in(source, "tether.ops")
    assert sorted(t for _, t in found) == ["tether.algos.ppo_trainer", "tether.cli", "tether.ops", "tether.ops.masking"]
    flagged = sorted(t for _, t in found if layer_of(t) > layer_of("tether.ops.kl"))
    assert flagged == ["tether.algos.ppo_trainer", "tether.cli"]
