"""The package's layout is its architecture: fader_kit/ holds a few layers, each a sub-package, and
a module imports only from its own layer or the layers below it (docs/design-notes.md, "Layout").

    util, errors, version  <-  maskers  <-  data  <-  model  <-  deploy  <-  engine  <-  cli

Every import counts: those inside functions and those under ``if TYPE_CHECKING:`` too (the
graph of tests/test_import_graph.py).  Small modules and functions keep each layer readable: no
module over 400 lines, no function over 60, and at most 12 entries at the top of fader_kit/."""
from __future__ import annotations

import ast
from pathlib import Path

from test_import_graph import import_graph

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fader_kit"
#: layer -> rank: a module may import modules of its own rank or lower.  A layer is a sub-package
#: of fader_kit or a module at its top.
RANK = {
    "util": 0, "errors": 0, "version": 0,
    "maskers": 1,
    "data": 2,
    "model": 3,
    "deploy": 4,
    "engine": 5,
    "cli": 6,
    "__main__": 7, "": 7,  # the package's __init__ re-exports from every layer
}
MAX_TOP = 12
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def layer(module: str) -> str | None:
    """``fader_kit.deploy.fit`` -> ``deploy``; ``fader_kit`` -> ``""``; outside fader_kit: None."""
    parts = module.split(".")
    if parts[0] != "fader_kit":
        return None
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        here = layer(module)
        if here not in RANK:
            continue
        for target in sorted(targets):
            there = layer(target)
            if there in RANK and RANK[there] > RANK[here]:
                out.append(f"{module} ({here}) imports {target} ({there}), a higher layer")
    return out


def test_the_rule_finds_an_upward_import():
    assert violations({"fader_kit.model.fader": {"fader_kit.deploy.detector", "fader_kit.util.files"}}) == [
        "fader_kit.model.fader (model) imports fader_kit.deploy.detector (deploy), a higher layer"]
    assert violations({"fader_kit.deploy.fit": {"fader_kit.engine.runner"}}) == [
        "fader_kit.deploy.fit (deploy) imports fader_kit.engine.runner (engine), a higher layer"]
    assert violations({"fader_kit.cli.main": {"fader_kit.deploy.fit", "fader_kit.model.config"}}) == []


def test_layers_import_downwards_only():
    found = violations(import_graph())
    assert found == [], "imports against the layering:\n" + "\n".join(found)


def test_every_entry_at_the_top_has_a_layer_and_there_are_few():
    entries = sorted(p.stem for p in PACKAGE.iterdir()
                     if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").is_file()))
    unlayered = [e for e in entries if e != "__init__" and e not in RANK]
    assert unlayered == [], f"top-level entries of fader_kit/ without a layer (put each in a sub-package): {unlayered}"
    assert len(entries) <= MAX_TOP, f"fader_kit/ has {len(entries)} entries at its top (at most {MAX_TOP}): {entries}"


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert long_modules == [], f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert long_functions == [], f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
