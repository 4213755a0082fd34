"""The README and the documentation stay true: every code block runs or is checked here.

Each fenced block of README.md, CONTRIBUTING.md and docs/**/*.md is one of:

- ``python``: executed (in a temporary folder, with a temporary cache), so it must be cheap;
- ``bash``: every ``fader-kit`` command is parsed by the real argument parser, cheap ones
  (``--help``, ``--version``, ``maskers``, ``plugins``) are run, and other programs must be known;
- ``toml``: parsed; ``text``: output or a layout, not run;
- or marked, on the line(s) just before it, ``<!-- docs-test: skip (REASON) -->`` with the reason
  it cannot run here (needs data, a GPU, minutes).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"python", "bash", "toml", "text"}
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*-->")
MARKER = re.compile(r"<!--\s*docs-test:")
FENCE = re.compile(r"^(?P<indent> {0,3})```(?P<lang>[^\s`]*)\s*$")
# Words about how the project was built, and machine paths, have no place in user-facing text.
FORBIDDEN = re.compile(r"other agents|previous session|this session|whoever continues|issue [0-9]+|/work/|/tmp/[a-z]",
                       re.IGNORECASE)
CHEAP = {("maskers",), ("plugins",)}
KNOWN_PROGRAMS = {"fader-kit", "python", "mkdocs", "ray", "pip", "cd", "export", ".", "ruff", "mypy"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group("lang")
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{path.relative_to(ROOT)}:{start + 1}: code block is never closed"
        comments, k = [], start - 1
        while k >= 0 and lines[k].strip().startswith("<!--"):
            comments.append(lines[k].strip())
            k -= 1
        reasons = [s.group("reason").strip() for c in comments if (s := SKIP.search(c))]
        bad = [c for c in comments if MARKER.search(c) and not SKIP.search(c)]
        assert not bad, f"{path.relative_to(ROOT)}:{start + 1}: a docs-test marker needs a reason: {bad[0]}"
        blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", reasons[0] if reasons else None))
        i = j + 1
    return blocks


BLOCKS = [b for p in DOC_FILES if p.is_file() for b in parse_blocks(p)]


def _blocks(lang: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.lang == lang]


def test_every_block_has_a_known_language():
    unknown = [f"{b.id} ({b.lang or 'no language'})" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not unknown, f"label each code block with one of {sorted(LANGUAGES)}: {unknown}"


def test_markers_sit_right_before_a_code_block():
    for path in DOC_FILES:
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if MARKER.search(line):
                k = n + 1
                while k < len(lines) and lines[k].strip().startswith("<!--"):
                    k += 1
                assert k < len(lines) and FENCE.match(lines[k]), f"{path.relative_to(ROOT)}:{n + 1}: marker not before a block"


@pytest.fixture(scope="module")
def docs_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("docs-cache")


@pytest.mark.parametrize("block", _blocks("python"))
def test_python_block_runs(block: Block, tmp_path, docs_cache, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FADER_KIT_CACHE", str(docs_cache))  # synthetic data generated once for every block
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})


def _commands(code: str) -> list[list[str]]:
    """Logical commands of a bash block: continuations joined, comments dropped, split on && and ;."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", ";", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(w)
    for i, words in enumerate(commands):
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
            words = words[1:]
        commands[i] = words
    return [c for c in commands if c]


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from fader_kit.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help / --version
            code = exc.code or 0
    return code, out.getvalue()


def _check_fader_kit(argv: list[str], where: str) -> None:
    from fader_kit.cli.main import build_parser

    if "--help" in argv or "-h" in argv or argv == ["--version"] or tuple(argv) in CHEAP:
        code, _ = _run_cli(argv)
        assert code == 0, f"{where}: fader-kit {' '.join(argv)} exited with {code}"
        return
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: fader-kit {' '.join(argv)} does not parse: {err.getvalue().strip()}")


def _check_python_m(argv: list[str], where: str) -> None:
    module = argv[2] if len(argv) > 2 else ""
    if module in ("pip", "pytest", "venv"):
        return
    if module == "fader_kit":
        _check_fader_kit(argv[3:], where)
        return
    if module.startswith("fader_kit_bench.") and hasattr(importlib.import_module(module), "main"):
        main = importlib.import_module(module).main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main(["--help"])
        unknown = [a for a in argv[3:] if a.startswith("--") and a not in out.getvalue()]
        assert not unknown, f"{where}: {module} has no option(s) {unknown}"
        return
    pytest.fail(f"{where}: unknown module in python -m {module}")


@pytest.mark.parametrize("block", _blocks("bash"))
def test_bash_block_commands_exist(block: Block):
    if block.skip:
        pytest.skip(block.skip)
    for argv in _commands(block.code):
        if argv[0] == "fader-kit":
            _check_fader_kit(argv[1:], block.id)
        elif argv[0] == "python" and argv[1:2] == ["-m"]:
            _check_python_m(argv, block.id)
        else:
            assert argv[0] in KNOWN_PROGRAMS, f"{block.id}: unknown program {argv[0]!r}"


@pytest.mark.parametrize("block", _blocks("toml"))
def test_toml_block_parses(block: Block):
    tomllib.loads(block.code)


def test_skipped_blocks_give_a_reason():
    for b in BLOCKS:
        assert b.skip is None or len(b.skip) >= 5, f"{b.id}: skip reason too short: {b.skip!r}"


def test_readme_is_at_most_15_kb():
    assert README.stat().st_size <= 15_000, f"README.md is {README.stat().st_size} bytes; keep it under 15 KB"


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_its_test_command():
    text = README.read_text(encoding="utf-8")
    m = re.match(r"# fader-kit\n\n```bash\n(?P<body>.*?)\n```\n", text, re.S)
    assert m, "README.md must begin with '# fader-kit' and one bash block"
    lines = m.group("body").splitlines()
    assert len(lines) == 2, f"the set-up block holds exactly two commands, not {len(lines)}"
    assert "pip install" in lines[0]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci and set(ci) == {lines[1]}, f"README's test command {lines[1]!r} differs from .ci/run's {ci}"


def test_no_machine_paths_or_process_words():
    texts = [*DOC_FILES, ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml", ROOT / "CITATION.cff"]
    hits = []
    for path in texts:
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if FORBIDDEN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_readme_relative_links_resolve():
    text = README.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (ROOT / target.split("#", 1)[0]).exists():
            missing.append(target)
    assert not missing, f"README.md links to missing files: {missing}"
