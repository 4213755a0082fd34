"""What the built distribution must hold: every module of the source tree under its installed name.

Used by tests/test_packaging.py (the package list of pyproject.toml against the folders) and by
CI (``python .ci/packaging.py WHEEL``: the files of the built wheel against the source tree), so a
new sub-package that pyproject.toml forgets fails before a user installs a wheel without it.
"""

from __future__ import annotations

import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setuptools_config(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_packages(root: Path = ROOT) -> dict[str, Path]:
    """Installed package name -> its folder, for every folder with an ``__init__.py`` under a
    top-level package's folder (``package-dir`` maps ``plugins/`` to ``fader_kit_plugins`` ...)."""
    cfg = setuptools_config(root)
    dirs = {name: root / cfg.get("package-dir", {}).get(name, name) for name in cfg["packages"] if "." not in name}
    found: dict[str, Path] = {}
    for top, folder in dirs.items():
        for init in sorted(folder.rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            if "__pycache__" not in rel:
                found[".".join((top, *rel))] = init.parent
    return found


def expected_files(root: Path = ROOT) -> set[str]:
    """Paths inside the wheel: every ``.py`` of every package, and the declared package data."""
    cfg = setuptools_config(root)
    files = set()
    for name, folder in source_packages(root).items():
        prefix = name.replace(".", "/")
        files |= {f"{prefix}/{p.name}" for p in folder.glob("*.py")}
        files |= {f"{prefix}/{pattern}" for pattern in cfg.get("package-data", {}).get(name, [])}
    return files


def missing_from_wheel(wheel: Path, root: Path = ROOT) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    return sorted(expected_files(root) - shipped)


if __name__ == "__main__":
    missing = missing_from_wheel(Path(sys.argv[1]))
    for path in missing:
        print(f"missing from the wheel: {path}")
    names = sorted(source_packages())
    print(f"{len(names)} packages, {len(expected_files())} files expected; {len(missing)} missing")
    sys.exit(1 if missing else 0)
