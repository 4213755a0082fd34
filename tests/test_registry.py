"""The plugin registry: discovery through entry points, pluggy's checks, the masker contract.

Every silent failure a plugin author can run into (misspelled hook, missing @hookimpl, entry
point naming a function, ``wrapper=True``, a plugin that registers nothing) must produce a
message naming the plugin; the other plugins keep working.
"""
import argparse
import importlib.metadata
import sys
import textwrap
import warnings

import pytest
import torch

from fader_kit.maskers.interfaces import Masker, MaskerInfo
from fader_kit.maskers.registry import (
    DISABLE_ENV,
    LOAD_ENV,
    MaskerOptionError,
    MaskerRegistry,
    UnknownMaskerError,
    default_registry,
)

PLUGIN = textwrap.dedent(
    """
    import torch
    from fader_kit.maskers.hookspecs import hookimpl
    from fader_kit.maskers.interfaces import Masker, MaskerInfo

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

# A masker written the naive way: no info, fit(self, images) returning None, a plain __init__.
NAIVE = textwrap.dedent(
    """
    import torch
    from fader_kit.maskers.hookspecs import hookimpl
    from fader_kit.maskers.interfaces import Masker

    class Bright(Masker):
        def __init__(self, level=0.5):
            self.level = level
            self.calls = []
        def fit(self, images):
            self.calls.append(images.shape[0])
            self.threshold = self.level
        def score_map(self, images):
            return images.mean(dim=1, keepdim=True)

    class OnlySeed(Bright):
        def fit(self, images, seed=0):
            self.calls.append(("seed", seed))

    @hookimpl
    def register_maskers(register):
        register("bright", Bright, weights="none")
        register("only_seed", OnlySeed)
    """
)

BROKEN = {
    # a hook name with a typo: pluggy's check_pending finds it
    "typo_hook": "from fader_kit.maskers.hookspecs import hookimpl\n@hookimpl\ndef register_masker(register):\n    pass\n",
    # the right name without @hookimpl: pluggy would skip it without a word
    "no_marker": "def register_maskers(register):\n    register('x', object)\n",
    # wrapper=True on a plain function
    "bad_wrapper": "from fader_kit.maskers.hookspecs import hookimpl\n@hookimpl(wrapper=True)\ndef register_maskers(register):\n    pass\n",
    # a hook that registers nothing
    "registers_nothing": "from fader_kit.maskers.hookspecs import hookimpl\n@hookimpl\ndef register_maskers(register):\n    pass\n",
    # no hook at all, but a near miss without marker
    "no_hooks": "def register_maskerz(register):\n    pass\n",
    # a masker class that cannot be instantiated
    "abstract": textwrap.dedent(
        """
        from fader_kit.maskers.hookspecs import hookimpl
        from fader_kit.maskers.interfaces import Masker
        class NoScore(Masker):
            pass
        @hookimpl
        def register_maskers(register):
            register("no_score", NoScore)
        """
    ),
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    modules = {"corner_plugin": PLUGIN, "naive_plugin": NAIVE, **BROKEN}
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "broken_register.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    raise RuntimeError('boom at register')\n"
    )
    (tmp_path / "good_wrapper.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n"
        "from corner_plugin import Corner\n"
        "@hookimpl(wrapper=True)\n"
        "def register_maskers(register):\n"
        "    register('wrapped_corner', Corner)\n"
        "    return (yield)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [*modules, "broken_import", "broken_register", "good_wrapper"]:
        sys.modules.pop(mod, None)


def _ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="fader_kit")


def _registry(*eps, env=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MaskerRegistry(entry_points=list(eps), env=env or {})
        reg.list()
    return reg


def _errors(reg):
    return {e.plugin: (e.stage, e.error) for e in reg.errors()}


# -- discovery -------------------------------------------------------------------------------------
def test_declared_entry_point_is_discovered_and_created(plugin_dir):
    reg = _registry(_ep("corner", "corner_plugin"))
    assert [e.name for e in reg.list()] == ["corner"]
    masker = reg.create("corner", size=2)
    assert isinstance(masker, Masker)
    m = masker.mask(torch.zeros(1, 3, 8, 8))
    assert int(m.sum()) == 4 and bool(m[0, 0, 0, 0])


def test_broken_plugins_are_reported_by_name_and_others_survive(plugin_dir):
    eps = [_ep("broken_import", "broken_import"), _ep("corner", "corner_plugin"), _ep("broken_register", "broken_register")]
    with pytest.warns(RuntimeWarning, match="broken_import"):
        reg = MaskerRegistry(entry_points=eps, env={})
        names = [e.name for e in reg.list()]
    assert names == ["corner"]
    errors = {(e.plugin, e.stage) for e in reg.errors()}
    assert errors == {("broken_import", "import"), ("broken_register", "register")}
    assert "boom at import" in " ".join(e.error for e in reg.errors())


def test_unknown_masker_lists_known_ones(plugin_dir):
    reg = _registry(_ep("corner", "corner_plugin"))
    with pytest.raises(UnknownMaskerError, match="unknown masker 'nope'; registered maskers: corner"):
        reg.create("nope")


def test_installed_builtin_patch_stats_is_found_through_its_entry_point():
    entry = default_registry(refresh=True).get("patch_stats")
    assert entry.plugin == "patch_stats" and entry.weights == "none"
    assert entry.distribution.startswith("fader-kit ")  # distribution name and version


# -- each silent failure of pluggy gets a message naming the plugin ------------------------------------
@pytest.mark.parametrize("plugin, stage, needle", [
    ("typo_hook", "register", "unknown hook(s) register_masker (did you mean 'register_maskers'?)"),
    ("no_marker", "register", "register_maskers are not decorated with @hookimpl"),
    ("bad_wrapper", "register", "not a generator function"),
    ("registers_nothing", "empty", "register_maskers registered no masker"),
    ("no_hooks", "load", "implements no fader-kit hook (register_maskers, register_commands, register_heads with @hookimpl); "
                         "register_maskerz look(s) like a misspelled hook"),
    ("abstract", "register", "masker 'no_score': NoScore does not implement score_map"),
])
def test_silent_pluggy_failures_become_messages(plugin_dir, plugin, stage, needle):
    with pytest.warns(RuntimeWarning, match=f"fader-kit plugin '{plugin}'"):
        reg = MaskerRegistry(entry_points=[_ep(plugin, plugin), _ep("corner", "corner_plugin")], env={})
        names = [e.name for e in reg.list()]
    assert names == ["corner"]  # the good plugin still loads
    got_stage, error = _errors(reg)[plugin]
    assert got_stage == stage and needle in error, error


def test_entry_point_naming_a_function_is_refused_with_the_fix(plugin_dir):
    reg = _registry(_ep("corner", "corner_plugin:register_maskers"))
    stage, error = _errors(reg)["corner"]
    assert stage == "load" and reg.list() == []
    assert "names a function; it must name the plugin module" in error and "corner = 'corner_plugin'" in error


def test_hooks_go_through_pluggy_so_a_generator_wrapper_works(plugin_dir):
    reg = _registry(_ep("w", "good_wrapper"))
    assert [e.name for e in reg.list()] == ["wrapped_corner"] and reg.errors() == []


# -- duplicates: built-ins win, the loser is reported ------------------------------------------------
def test_builtin_wins_a_duplicate_even_when_the_third_party_sorts_first(tmp_path, monkeypatch):
    (tmp_path / "fk_thief.py").write_text(
        "from fader_kit.maskers.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_maskers(register):\n"
        "    register('patch_stats', lambda **kw: None)\n"
        "    register('thief_own', lambda **kw: None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = _registry(_ep("aaa_thief", "fk_thief"), _ep("patch_stats", "fader_kit_plugins.patch_stats"))
    assert reg.get("patch_stats").plugin == "patch_stats"
    assert reg.get("thief_own").plugin == "aaa_thief"  # its other masker still counts
    stage, error = _errors(reg)["aaa_thief"]
    assert stage == "duplicate"
    assert error == "masker 'patch_stats' is already registered by built-in plugin 'patch_stats'; built-ins win, so this one is ignored"


def test_same_module_under_two_names_is_reported(plugin_dir):
    reg = _registry(_ep("a", "corner_plugin"), _ep("b", "corner_plugin"))
    assert [e.plugin for e in reg.list()] == ["a"]
    assert "corner_plugin is already registered as plugin 'a'" in _errors(reg)["b"][1]


# -- environment switches -------------------------------------------------------------------------
def test_load_only_and_disable_switches(plugin_dir):
    eps = [_ep("corner", "corner_plugin"), _ep("naive", "naive_plugin")]
    assert [e.name for e in _registry(*eps, env={LOAD_ENV: "naive"}).list()] == ["bright", "only_seed"]
    assert _registry(*eps, env={LOAD_ENV: ""}).list() == []
    assert [e.name for e in _registry(*eps, env={DISABLE_ENV: "naive"}).list()] == ["corner"]
    reg = _registry(*eps, env={DISABLE_ENV: "naive,nope"})
    assert {p.name: p.status for p in reg.plugins()} == {"corner": "ok", "naive": "skipped"}
    assert "FADER_KIT_DISABLE_PLUGINS names 'nope', but no installed plugin has that name" in _errors(reg)["nope"][1]


# -- the forgiving masker contract -------------------------------------------------------------------
def test_naive_masker_gets_info_from_its_registration_and_fit_adapted(plugin_dir):
    reg = _registry(_ep("naive", "naive_plugin"))
    masker = reg.create("bright", level=0.25, device="cpu", seed=3, category="washer", allow_random_weights=True)
    assert masker.info == MaskerInfo(name="bright", weights="none")
    images = torch.zeros(2, 3, 4, 4)
    images[1] = 1.0
    assert masker.fit(images, seed=7, progress=True) is masker  # callers' keywords are absorbed
    assert masker.calls == [2]
    assert masker.mask(images)[:, 0, 0, 0].tolist() == [False, True]
    other = reg.create("only_seed")
    assert other.fit(images, seed=7, progress=False) is other and other.calls == [("seed", 7)]
    assert other.info.weights == "unknown"  # registered without weights=


def test_unknown_option_is_one_error_naming_it_and_the_accepted_ones(plugin_dir):
    reg = _registry(_ep("naive", "naive_plugin"), _ep("patch_stats", "fader_kit_plugins.patch_stats"))
    with pytest.raises(MaskerOptionError) as exc:
        reg.create("bright", levle=0.3)
    assert str(exc.value) == ("invalid options for masker 'bright': unexpected option(s) levle; accepted: level "
                              "(plugin 'naive')")
    with pytest.raises(MaskerOptionError, match="unexpected option.*weights; accepted: auto_ratio"):
        reg.create("patch_stats", weights="/some/file")  # a weight-free masker refuses weights
    with pytest.raises(MaskerOptionError, match="patch_size: Input should be greater than or equal to 2"):
        from fader_kit.maskers.registry import masker_config
        from fader_kit_plugins.patch_stats import PatchStatsConfig

        masker_config(PatchStatsConfig, "patch_stats", {"patch_size": 1})
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TypeError)
    assert reg.accepts("bright", "level") and not reg.accepts("bright", "epochs")


def test_fit_with_required_extra_parameter_is_refused_at_class_creation():
    with pytest.raises(TypeError, match=r"Labels.fit: fader-kit calls fit\(images, \*, seed=0, progress=False\); "
                                        "parameter\\(s\\) labels need a default"):
        class Labels(Masker):
            def fit(self, images, labels):
                pass

            def score_map(self, images):
                return images[:, :1]


# -- commands hook ----------------------------------------------------------------------------------
def test_register_commands_hook_adds_subcommands():
    from fader_kit.maskers.hookspecs import hookimpl

    class Hello:
        @hookimpl
        def register_commands(self, subparsers):
            subparsers.add_parser("hello").set_defaults(func=lambda args: 0)

    reg = MaskerRegistry(entry_points=[], extra_plugins=[Hello()], env={})
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    reg.register_commands(sub)
    assert parser.parse_args(["hello"]).func(None) == 0
    assert [(p.name, p.hooks) for p in reg.plugins()] == [("Hello", ("register_commands",))]


@pytest.mark.parametrize("name", ["patch_stats", "dino_vit", "plain_vit", "winclip", "dsr", "msflow", "ami_net"])
def test_every_builtin_masker_refuses_an_unknown_option_with_one_error_type(name):
    """Declared options: refused before the factory runs (no weights or fitting needed), naming
    the masker, the option and what it accepts; the host keywords pass silently."""
    from fader_kit.maskers.registry import MaskerOptionError, default_registry

    reg = default_registry()
    with pytest.raises(MaskerOptionError, match=rf"masker '{name}'.*no_such_option.*accepted: "):
        reg.create(name, no_such_option=1)
    assert reg.accepts(name, "no_such_option") is False
    assert "seed" not in reg.factory_options(name, {"seed": 3, "category": "washer"}) or reg.accepts(name, "seed")


def test_an_unhashable_plugin_object_registers_its_hooks():
    """pluggy 1.7 keeps plugins in a set; a namespace holding @hookimpl functions (unhashable)
    still registers, and its masker is created, whatever pluggy version is installed."""
    import types

    import torch

    from fader_kit.maskers.hookspecs import hookimpl
    from fader_kit.maskers.interfaces import Masker

    class Constant(Masker):
        def fit(self, images):
            self.threshold = 0.5

        def score_map(self, images):
            return torch.zeros(images.shape[0], 1, *images.shape[-2:])

    @hookimpl
    def register_maskers(register):
        register("constant_ns", Constant, summary="zero everywhere", weights="none")

    namespace = types.SimpleNamespace(register_maskers=register_maskers)
    with pytest.raises(TypeError):
        hash(namespace)
    reg = MaskerRegistry(entry_points=[], extra_plugins=[namespace], env={})
    assert isinstance(reg.create("constant_ns"), Constant)
    assert reg.errors() == []
