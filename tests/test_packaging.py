"""The distribution ships every sub-package: pyproject.toml's list against the source folders."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packaging():
    spec = importlib.util.spec_from_file_location("ci_packaging", ROOT / ".ci" / "packaging.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ci_packaging", module)
    spec.loader.exec_module(module)
    return module


def test_every_source_package_is_listed_in_pyproject():
    packaging = _packaging()
    listed = set(packaging.setuptools_config()["packages"])
    in_tree = set(packaging.source_packages())
    assert in_tree - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - in_tree == set(), "pyproject.toml lists packages that have no folder"
    assert {"fader_kit.engine", "fader_kit.util", "fader_kit_plugins", "fader_kit_bench"} <= in_tree


def test_a_forgotten_sub_package_is_found(tmp_path):
    """The check itself: a new folder with an __init__.py that pyproject.toml does not list."""
    packaging = _packaging()
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackages = ["pkg"]\n')
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "mod.py").write_text("")
    assert set(packaging.source_packages(tmp_path)) == {"pkg", "pkg.sub"}
    assert packaging.expected_files(tmp_path) == {"pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/mod.py"}


def test_the_wheel_check_names_a_missing_file(tmp_path):
    import zipfile

    packaging = _packaging()
    wheel = tmp_path / "fader_kit-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fader_kit/__init__.py", "")
    missing = packaging.missing_from_wheel(wheel)
    assert "fader_kit/engine/runner.py" in missing and "fader_kit/__init__.py" not in missing
