"""Third-party plugins: found through package metadata alone, run through ``fader-kit evaluate``,
and a broken plugin is reported by name while the others keep working.

The example package in ``examples/fader-kit-example-plugin`` is "installed" the way pip leaves
it on disk -- the module plus a ``*.dist-info`` folder with METADATA and entry_points.txt -- in
a temporary folder put on PYTHONPATH of a subprocess.  Nothing is downloaded or pip-installed.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fader_kit.registry import MaskerRegistry, UnknownMaskerError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fader-kit-example-plugin"


def install_as_metadata(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Write ``<dist>-<version>.dist-info`` with METADATA and entry_points.txt into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fader_kit]\n{lines}")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The example plugin and a broken one, installed as metadata only."""
    site = tmp_path / "site"
    site.mkdir()
    # the example plugin's pyproject declares exactly this entry point
    assert 'mean_diff = "fader_kit_example_plugin"' in (EXAMPLE / "pyproject.toml").read_text()
    shutil.copytree(EXAMPLE / "src" / "fader_kit_example_plugin", site / "fader_kit_example_plugin")
    install_as_metadata(site, "fader-kit-example-plugin", "0.1.0", {"mean_diff": "fader_kit_example_plugin"})
    (site / "fk_broken_example.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    install_as_metadata(site, "fk-broken-example", "0.0.1", {"broken_example": "fk_broken_example"})
    return site


def run_cli(site: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "fader_kit", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_metadata_only_plugin_is_listed_and_broken_one_reported(site):
    out = run_cli(site, "maskers")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "mean_diff" in rows and "fader_kit_example_plugin" not in rows
    assert rows["mean_diff"].split()[1] == "mean_diff" and "none" in rows["mean_diff"]
    assert "patch_stats" in rows and "dino_vit" in rows  # the built-ins still load
    assert "'broken_example' failed at import" in out.stderr and "broken on purpose" in out.stderr


@pytest.mark.slow
def test_metadata_only_plugin_runs_through_fader_kit_evaluate(site, tmp_path):
    out_dir = tmp_path / "run"
    out = run_cli(
        site, "evaluate", "--data", "synthetic", "--category", "washer", "--masker", "mean_diff",
        "--profile", "smoke", "--device", "cpu", "--out", str(out_dir), "--quiet", "--threads", "1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["masker"]["name"] == "mean_diff" and metrics["masker"]["weights"] == "none"
    for model in ("ear", "fader"):
        assert 0.0 <= metrics[model]["image_auroc"] <= 1.0 and 0.0 <= metrics[model]["pixel_auroc"] <= 1.0
    assert "mean_diff" in out.stdout


def test_failing_plugins_are_reported_by_name_and_the_others_load(tmp_path, monkeypatch):
    (tmp_path / "fk_raises_on_import.py").write_text("raise RuntimeError('import boom')\n")
    (tmp_path / "fk_raises_on_register.py").write_text(
        "from fader_kit.hookspecs import hookimpl\n\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    raise RuntimeError('register boom')\n"
    )
    (tmp_path / "fk_steals_a_name.py").write_text(
        "from fader_kit.hookspecs import hookimpl\n\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    register('plain_vit', lambda **kw: None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint
    registry = MaskerRegistry(entry_points=[
        ep(name="attention", value="fader_kit_plugins.attention", group="fader_kit"),
        ep(name="ghost", value="fk_no_such_module_anywhere", group="fader_kit"),
        ep(name="on_import", value="fk_raises_on_import", group="fader_kit"),
        ep(name="on_register", value="fk_raises_on_register", group="fader_kit"),
        ep(name="zz_thief", value="fk_steals_a_name", group="fader_kit"),
    ])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [e.name for e in registry.list()]
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    for plugin in ("ghost", "on_import", "on_register", "zz_thief"):
        assert f"plugin {plugin!r} failed" in warned
    assert names == ["dino_vit", "plain_vit"]
    assert registry.get("plain_vit").plugin == "attention"  # the later duplicate did not replace it
    errors = {(e.plugin, e.stage): e.error for e in registry.errors()}
    assert set(errors) == {("ghost", "import"), ("on_import", "import"), ("on_register", "register"), ("zz_thief", "register")}
    assert "ModuleNotFoundError" in errors[("ghost", "import")]
    assert "import boom" in errors[("on_import", "import")]
    assert "register boom" in errors[("on_register", "register")]
    assert "already registered by 'attention'" in errors[("zz_thief", "register")]
    with pytest.raises(UnknownMaskerError, match="plugin 'on_register' failed at register"):
        registry.get("whatever")
