"""Plugin discovery through entry points, as a third-party plugin would be found."""
import importlib.metadata
import sys
import textwrap

import pytest
import torch

from fader_kit.interfaces import Masker
from fader_kit.registry import MaskerRegistry, UnknownMaskerError, default_registry

PLUGIN = textwrap.dedent(
    """
    import torch
    from fader_kit.hookspecs import hookimpl
    from fader_kit.interfaces import Masker, MaskerInfo

    class Corner(Masker):
        def __init__(self, size=4, **_):
            self.size = size
        @property
        def info(self):
            return MaskerInfo(name="corner", weights="none")
        def score_map(self, images):
            out = torch.zeros(images.shape[0], 1, *images.shape[-2:])
            out[..., : self.size, : self.size] = 1.0
            return out
        def mask(self, images):
            return self.score_map(images) > 0.5

    @hookimpl
    def register_maskers(register):
        register("corner", Corner, summary="top-left square", weights="none")
    """
)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "corner_plugin.py").write_text(PLUGIN)
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "broken_register.py").write_text(
        "from fader_kit.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    raise RuntimeError('boom at register')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("corner_plugin", "broken_import", "broken_register"):
        sys.modules.pop(mod, None)


def _ep(name: str, module: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=module, group="fader_kit")


def test_declared_entry_point_is_discovered_and_created(plugin_dir):
    reg = MaskerRegistry(entry_points=[_ep("corner", "corner_plugin")])
    assert [e.name for e in reg.list()] == ["corner"]
    masker = reg.create("corner", size=2)
    assert isinstance(masker, Masker)
    m = masker.mask(torch.zeros(1, 3, 8, 8))
    assert int(m.sum()) == 4 and bool(m[0, 0, 0, 0])


def test_broken_plugins_are_reported_by_name_and_others_survive(plugin_dir):
    eps = [_ep("broken_import", "broken_import"), _ep("corner", "corner_plugin"), _ep("broken_register", "broken_register")]
    with pytest.warns(RuntimeWarning, match="broken_import"):
        reg = MaskerRegistry(entry_points=eps)
        names = [e.name for e in reg.list()]
    assert names == ["corner"]
    errors = {(e.plugin, e.stage) for e in reg.errors()}
    assert errors == {("broken_import", "import"), ("broken_register", "register")}
    assert "boom at import" in " ".join(e.error for e in reg.errors())


def test_unknown_masker_lists_known_ones(plugin_dir):
    reg = MaskerRegistry(entry_points=[_ep("corner", "corner_plugin")])
    with pytest.raises(UnknownMaskerError, match="unknown masker 'nope'; registered maskers: corner"):
        reg.create("nope")


def test_duplicate_names_are_refused(plugin_dir):
    with pytest.warns(RuntimeWarning, match="already registered"):
        reg = MaskerRegistry(entry_points=[_ep("a", "corner_plugin"), _ep("b", "corner_plugin")])
        assert [e.plugin for e in reg.list()] == ["a"]


def test_installed_builtin_patch_stats_is_found_through_its_entry_point():
    entry = default_registry(refresh=True).get("patch_stats")
    assert entry.plugin == "patch_stats" and entry.weights == "none"
