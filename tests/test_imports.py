"""``fader_kit`` (core and CLI) imports neither the built-in plugins nor the benchmarks: they
reach it only through entry points, so there is no import cycle between the two CLIs."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHERS = ("fader_kit_plugins", "fader_kit_bench")


def test_importing_fader_kit_and_its_cli_loads_no_plugin_or_benchmark_package():
    code = (
        "import sys, fader_kit, fader_kit.cli, fader_kit.registry, fader_kit.export\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OTHERS!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_module_of_fader_kit_names_them_in_an_import():
    offenders = []
    for path in (ROOT / "fader_kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in OTHERS]
    assert offenders == []
