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
        "import sys, fader_kit, fader_kit.cli.main, fader_kit.maskers.registry, fader_kit.model.onnx_export\n"
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


def _imported_by(argv: list[str]) -> tuple[str, list[str]]:
    """Run ``fader-kit ARGV`` in a fresh interpreter: its output and which heavy packages it imported."""
    code = (
        "import contextlib, io, sys\nfrom fader_kit.cli.main import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
        "print(out.getvalue())\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules if m.split('.')[0] in {(*OTHERS, 'torch')!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text, _, modules = out.stdout.rstrip().rpartition("\n")
    return text, eval(modules)


def test_top_level_help_lists_the_declared_commands_without_importing_them():
    text, modules = _imported_by(["--help"])
    assert modules == []  # neither torch nor a plugin: the help answers at once
    assert "bench" in text and "report" in text and "evaluate" in text


def test_a_declared_command_imports_its_own_module_only():
    text, modules = _imported_by(["report", "--help"])
    assert "fader_kit_bench" in modules and "fader_kit_plugins" not in modules
    assert "--no-figures" in text
