"""Third-party plugins: found through package metadata alone, run through ``fader-kit evaluate``,
and a broken plugin is reported by name while the others keep working.

The example package in ``examples/fader-kit-example-plugin`` is "installed" the way pip leaves
it on disk -- the module plus a ``*.dist-info`` folder with METADATA and entry_points.txt -- in
a temporary folder put on PYTHONPATH of a subprocess.  Nothing is downloaded or pip-installed.
The example is written the naive way (no ``info``, ``fit(self, images)`` returning None, a plain
``__init__(self, quantile)``), so running it through ``evaluate`` checks the forgiving contract.
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

from fader_kit.maskers.registry import MaskerRegistry, UnknownMaskerError

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
    (site / "fk_shadow.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n"
        "from fader_kit_example_plugin import MeanDiffMasker\n\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    register('patch_stats', MeanDiffMasker)\n"
    )
    install_as_metadata(site, "fk-shadow", "0.2.0", {"aaa_shadow": "fk_shadow"})
    return site


def run_cli(site: Path, *args: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_KIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "fader_kit", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_metadata_only_plugin_is_listed_and_broken_one_reported(site):
    out = run_cli(site, "maskers")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "mean_diff" in rows and "fader_kit_example_plugin" not in rows
    assert rows["mean_diff"][1:4] == ["mean_diff", "fader-kit-example-plugin==0.1.0", "none"]
    assert "dino_vit" in rows  # the built-ins still load
    assert rows["patch_stats"][1:3] == ["patch_stats", "fader-kit==0.1.0"]  # and win a duplicate name
    assert "'broken_example' failed at import" in out.stderr and "broken on purpose" in out.stderr
    assert ("plugin 'aaa_shadow': masker 'patch_stats' is already registered by built-in plugin 'patch_stats'; "
            "built-ins win, so this one is ignored") in out.stderr


def test_environment_switch_loads_only_the_named_plugins(site):
    out = run_cli(site, "maskers", FADER_KIT_LOAD_PLUGINS="mean_diff,patch_stats")
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["mean_diff", "patch_stats"]
    assert out.stderr == ""  # the broken and the shadowing plugins were not even imported
    out = run_cli(site, "plugins", FADER_KIT_DISABLE_PLUGINS="broken_example,aaa_shadow")
    status = {line.split()[0]: line.split()[2] for line in out.stdout.splitlines()[1:] if "==" in line}
    assert status["broken_example"] == status["aaa_shadow"] == "skipped" and status["mean_diff"] == "ok"
    assert out.stderr == ""


@pytest.mark.slow
def test_metadata_only_plugin_runs_through_fader_kit_evaluate(site, tmp_path, smoke_ears):
    out_dir = tmp_path / "run"
    smoke_ears(out_dir)  # blob-trained: the built-in masker's U-Net serves the plugin's masker too
    out = run_cli(
        site, "evaluate", "--data", "synthetic", "--category", "washer", "--masker", "mean_diff",
        "--profile", "smoke", "--device", "cpu", "--out", str(out_dir), "--quiet", "--threads", "1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["masker"]["name"] == "mean_diff" and metrics["masker"]["weights"] == "none"
    # the eval-mode U-Net localises the synthetic defects far above chance with the plugin's
    # masks, and the plugin alone is scored as a detector too
    for model in ("ear", "fader"):
        assert metrics[model]["pixel_auroc"] > 0.75, (model, metrics[model])
    assert metrics["masker_alone"]["pixel_auroc"] > 0.6, metrics["masker_alone"]
    assert "mean_diff" in out.stdout


def test_unknown_option_of_a_plugin_is_one_error_line(site, tmp_path):
    out = run_cli(site, "evaluate", "--category", "washer", "--masker", "mean_diff", "--masker-option", "quantil=0.9",
                  "--profile", "smoke", "--out", str(tmp_path), "--quiet")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: invalid options for masker 'mean_diff': unexpected option(s) quantil; accepted: quantile (plugin 'mean_diff')"
    )


def test_failing_plugins_are_reported_by_name_and_the_others_load(tmp_path, monkeypatch):
    (tmp_path / "fk_raises_on_import.py").write_text("raise RuntimeError('import boom')\n")
    (tmp_path / "fk_raises_on_register.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    raise RuntimeError('register boom')\n"
    )
    (tmp_path / "fk_steals_a_name.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n\n"
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
        ep(name="aa_thief", value="fk_steals_a_name", group="fader_kit"),  # sorts first, still loses
    ], env={})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [e.name for e in registry.list()]
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    for plugin in ("ghost", "on_import", "on_register"):
        assert f"plugin {plugin!r} failed" in warned
    assert "plugin 'aa_thief': masker 'plain_vit' is already registered by built-in plugin 'attention'" in warned
    assert names == ["dino_vit", "plain_vit"]
    assert registry.get("plain_vit").plugin == "attention"  # the built-in keeps its name
    errors = {(e.plugin, e.stage): e.error for e in registry.errors()}
    assert set(errors) == {("ghost", "import"), ("on_import", "import"), ("on_register", "register"), ("aa_thief", "duplicate")}
    assert "ModuleNotFoundError" in errors[("ghost", "import")]
    assert "import boom" in errors[("on_import", "import")]
    assert "register boom" in errors[("on_register", "register")]
    with pytest.raises(UnknownMaskerError, match="plugin 'on_register' failed at register"):
        registry.get("whatever")
