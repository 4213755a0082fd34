"""Plugins: discovered through the ``fader_kit`` entry-point group and run through pluggy.

Built-in maskers (``fader_kit_plugins``) and the benchmark commands (``fader_kit_bench``) take the
same road as third-party plugins, so the road is always tested.  Each plugin is loaded, checked
and asked to register on its own: one that fails is recorded (``plugin_errors()``), warned about
and reported by name, and the others keep working.  What is refused, and why:

- an entry point that names a function or class instead of the plugin module;
- a hook name fader-kit does not know (``pm.check_pending()``, e.g. ``register_masker``);
- a function named like a hook but without ``@hookimpl`` (pluggy would silently skip it);
- a hook implementation pluggy rejects (e.g. ``wrapper=True`` on a plain function);
- a plugin that implements no hook, or whose ``register_maskers`` registers nothing (warning).

Hooks are called through pluggy's hook callers (one plugin at a time, so that a failure is
attributed to its plugin), which keeps pluggy's own argument matching and wrapper semantics.

Duplicate masker names: a built-in masker always wins; among third-party plugins the first in
entry-point name order wins.  The loser is recorded with stage ``duplicate`` and shown by
``fader-kit maskers``.

Environment: ``FADER_KIT_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none),
``FADER_KIT_DISABLE_PLUGINS=a,b`` skips the named ones (compare ``LLM_LOAD_PLUGINS`` and
``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).  The names are entry-point names as ``fader-kit plugins``
lists them (built-ins included: ``patch_stats``, ``attention``, ..., ``bench``).

Masker options (one error type, :class:`MaskerOptionError`): a factory is called with only the
keywords its signature accepts (or the ``options=`` it declared at registration).  The host
keywords ``device``, ``seed``, ``category`` and ``allow_random_weights`` are offered to every
factory and silently left out where not accepted; any other option a factory does not accept is
refused, naming the option and the accepted ones.
"""
from __future__ import annotations

import argparse
import builtins
import difflib
import importlib.metadata
import inspect
import os
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pluggy
from pydantic import BaseModel

from fader_kit.maskers import hookspecs
from fader_kit.maskers.interfaces import Masker, MaskerInfo, keyword_parameters
from fader_kit.maskers.entries import (  # noqa: F401  (the registry's public names, defined beside it)
    _LEGACY_HOST_KEYWORDS, HOST_KEYWORDS, MaskerEntry, MaskerOptionError, PluginError, PluginInfo,
    UnknownMaskerError, _unexpected, masker_config, option_names,
)

BUILTIN_PREFIXES = ("fader_kit_plugins", "fader_kit_bench", "fader_kit.")
LOAD_ENV = "FADER_KIT_LOAD_PLUGINS"
DISABLE_ENV = "FADER_KIT_DISABLE_PLUGINS"
HOOKS = ("register_maskers", "register_commands", "register_heads")


def _env_names(env: Mapping[str, str], key: str) -> list[str] | None:
    if key not in env:
        return None
    return [n.strip() for n in env[key].split(",") if n.strip()]


def _module_name(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None) or type(obj).__module__


def _is_builtin(module: str) -> bool:
    return module.startswith(BUILTIN_PREFIXES) or module == "fader_kit"


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ""
    try:
        return f"{dist.name} {dist.version}"
    except Exception:  # odd metadata must not break discovery
        return ""


def _hashable_plugin(obj: Any) -> Any:
    """The plugin object itself, or, for an unhashable one, a module holding the same attributes.

    pluggy 1.7 keeps plugins in a set, so an unhashable namespace (``types.SimpleNamespace``, a
    dict-like object) would fail deep inside ``register``; its hook functions keep their
    ``@hookimpl`` marks when copied onto a module, so it registers the same way.
    """
    try:
        hash(obj)
        return obj
    except TypeError:
        proxy = types.ModuleType(f"{type(obj).__name__}_plugin")
        proxy.__dict__.update(vars(obj))
        return proxy


@dataclass
class MaskerRegistry:
    """One pluggy plugin manager, its plugins and the maskers they registered.

    ``entry_points`` defaults to the installed ``fader_kit`` group (filtered by the environment
    switches); tests pass their own.  ``extra_plugins`` are modules/objects with hook
    implementations registered directly (handy in notebooks); they are never filtered.
    """

    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
    extra_plugins: Iterable[Any] = ()
    env: Mapping[str, str] | None = None
    _entries: dict[str, MaskerEntry] = field(default_factory=dict, init=False)
    _errors: list[PluginError] = field(default_factory=list, init=False)
    _plugins: dict[str, PluginInfo] = field(default_factory=dict, init=False)
    _objects: dict[str, Any] = field(default_factory=dict, init=False)
    _pm: pluggy.PluginManager | None = field(default=None, init=False)

    # -- loading -----------------------------------------------------------------------------
    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        self._load()
        assert self._pm is not None
        return self._pm

    def _load(self) -> None:
        if self._pm is not None:
            return
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        loaded: list[tuple[PluginInfo, Any]] = []
        for ep in self._selected_entry_points():
            info = PluginInfo(ep.name, ep.value, _distribution(ep), _is_builtin(ep.value.split(":")[0]))
            self._plugins[ep.name] = info
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                info.status = "failed"
                self._record(ep.name, "import", f"{type(exc).__name__}: {exc}")
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
                info.status = "failed"
                kind = "a class" if inspect.isclass(obj) else "a function"
                self._record(ep.name, "load",
                             f"entry point {ep.name} = {ep.value!r} names {kind}; it must name the plugin module "
                             f"that holds the @hookimpl functions: {ep.name} = {ep.module!r}")
                continue
            loaded.append((info, obj))
        for obj in map(_hashable_plugin, self.extra_plugins):
            name = getattr(obj, "__name__", None) or type(obj).__name__
            info = PluginInfo(name, repr(obj), "", _is_builtin(_module_name(obj)))
            self._plugins.setdefault(name, info)
            loaded.append((info, obj))
        # built-ins first, so that a built-in masker always wins a duplicate name
        loaded.sort(key=lambda pair: not pair[0].builtin)
        for info, obj in loaded:
            if self._register_plugin(info, obj):
                self._call(info, "register_maskers", register=self._registrar(info))

    def _selected_entry_points(self) -> list[importlib.metadata.EntryPoint]:
        env = os.environ if self.env is None else self.env
        eps = sorted(
            self.entry_points if self.entry_points is not None
            else importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP),
            key=lambda e: e.name,
        )
        only, skip = _env_names(env, LOAD_ENV), set(_env_names(env, DISABLE_ENV) or [])
        names = {e.name for e in eps}
        for key, wanted in ((LOAD_ENV, only or []), (DISABLE_ENV, sorted(skip))):
            for n in wanted:
                if n not in names:
                    self._record(n, "env", f"{key} names {n!r}, but no installed plugin has that name "
                                           f"(installed: {', '.join(sorted(names)) or 'none'})")
        selected = []
        for ep in eps:
            if (only is not None and ep.name not in only) or ep.name in skip:
                self._plugins[ep.name] = PluginInfo(ep.name, ep.value, _distribution(ep),
                                                    _is_builtin(ep.value.split(":")[0]), status="skipped")
                continue
            selected.append(ep)
        return selected

    def _register_plugin(self, info: PluginInfo, obj: Any) -> bool:
        """Register ``obj`` with pluggy and check it; on any problem unregister it and record why."""
        pm = self._pm
        assert pm is not None
        try:
            pm.register(obj, name=info.name)
        except pluggy.PluginValidationError as exc:
            return self._refuse(info, "register", " ".join(str(exc).split()))
        except ValueError as exc:  # the same module under two entry-point names
            other = pm.get_name(obj) if pm.is_registered(obj) else None
            why = f"{_module_name(obj)} is already registered as plugin {other!r}" if other else str(exc)
            return self._refuse(info, "register", why)
        self._objects[info.name] = obj
        unknown = [n for n, caller in vars(pm.hook).items()
                   if isinstance(caller, pluggy.HookCaller) and not caller.has_spec()
                   and any(i.plugin_name == info.name for i in caller.get_hookimpls())]
        if unknown:
            hints = "".join(f" (did you mean {m[0]!r}?)" for n in unknown[:1] for m in [difflib.get_close_matches(n, HOOKS, 1)] if m)
            pm.unregister(obj)
            self._objects.pop(info.name, None)
            return self._refuse(info, "register", f"unknown hook(s) {', '.join(unknown)}{hints}; "
                                                  f"fader-kit hooks: {', '.join(HOOKS)}")
        pm.check_pending()  # every remaining implementation has a spec: this cannot fail now
        implemented = tuple(h for h in HOOKS if any(i.plugin_name == info.name for i in getattr(pm.hook, h).get_hookimpls()))
        unmarked = [a for a in HOOKS if a not in implemented and callable(getattr(obj, a, None))]
        if unmarked:
            pm.unregister(obj)
            self._objects.pop(info.name, None)
            return self._refuse(info, "register", f"function(s) {', '.join(unmarked)} are not decorated with "
                                                  "@hookimpl (from fader_kit.maskers.hookspecs import hookimpl), so they would never be called")
        if not implemented:
            near = [a for a in dir(obj) if not a.startswith("_") and callable(getattr(obj, a, None))
                    and difflib.get_close_matches(a, HOOKS, 1, cutoff=0.8)]
            hint = f"; {', '.join(near)} look(s) like a misspelled hook" if near else ""
            pm.unregister(obj)
            self._objects.pop(info.name, None)
            return self._refuse(info, "load", f"implements no fader-kit hook ({', '.join(HOOKS)} with @hookimpl){hint}")
        info.hooks = implemented
        return True

    def _refuse(self, info: PluginInfo, stage: str, why: str) -> bool:
        info.status = "failed"
        self._record(info.name, stage, why)
        return False

    def _call(self, info: PluginInfo, hook: str, **kwargs: Any) -> bool:
        """Call ``hook`` of one plugin through pluggy; a failure is recorded against it."""
        if hook not in info.hooks or info.status != "ok":
            return False
        pm = self._pm
        assert pm is not None
        others = [o for n, o in self._objects.items() if n != info.name]
        try:
            pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
        except Exception as exc:
            info.status = "failed"
            stage = {"register_maskers": "register", "register_heads": "heads"}.get(hook, "commands")
            self._record(info.name, stage, f"{type(exc).__name__}: {exc}")
            return False
        if hook == "register_maskers" and not info.maskers:
            self._record(info.name, "empty", "register_maskers registered no masker")
        return True

    def _record(self, plugin: str, stage: str, error: str) -> None:
        err = PluginError(plugin, stage, error)
        self._errors.append(err)
        warnings.warn(f"fader-kit {err}", RuntimeWarning, stacklevel=4)

    def _registrar(self, info: PluginInfo) -> Callable[..., None]:
        def register(
            name: str,
            factory: Callable[..., Masker],
            *,
            summary: str = "",
            weights: str = "",
            options: type[BaseModel] | Iterable[str] | None = None,
        ) -> None:
            if not callable(factory):
                raise TypeError(f"factory for {name!r} is not callable")
            if inspect.isclass(factory):
                if not issubclass(factory, Masker):
                    raise TypeError(f"masker {name!r}: {factory.__name__} is not a fader_kit.Masker subclass")
                missing = sorted(getattr(factory, "__abstractmethods__", ()))
                if missing:
                    raise TypeError(
                        f"masker {name!r}: {factory.__name__} does not implement {', '.join(missing)} "
                        "(a masker needs score_map(self, images) -> [B, 1, H, W] float)"
                    )
            named, any_keyword = keyword_parameters(factory)
            declared = option_names(options)
            accepted = None if any_keyword and declared is None else named | (declared or frozenset())
            if name in self._entries:
                winner = self._entries[name]
                rule = "built-ins win" if self._plugins[winner.plugin].builtin else "the first plugin in name order wins"
                self._record(info.name, "duplicate",
                             f"masker {name!r} is already registered by {'built-in ' if rule == 'built-ins win' else ''}"
                             f"plugin {winner.plugin!r}; {rule}, so this one is ignored")
                info.maskers.append(f"{name} (shadowed)")
                return
            self._entries[name] = MaskerEntry(name, factory, info.name, summary, weights, accepted, info.distribution)
            info.maskers.append(name)

        return register

    # -- public ------------------------------------------------------------------------------
    def list(self) -> builtins.list[MaskerEntry]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def errors(self) -> builtins.list[PluginError]:
        self._load()
        return list(self._errors)

    def plugins(self) -> builtins.list[PluginInfo]:
        self._load()
        return sorted(self._plugins.values(), key=lambda p: (not p.builtin, p.name))

    def get(self, name: str) -> MaskerEntry:
        self._load()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            broken = "".join(f"\n  {e}" for e in self._errors if e.stage not in ("duplicate", "empty"))
            raise UnknownMaskerError(f"unknown masker {name!r}; registered maskers: {known}{broken}")
        return self._entries[name]

    def accepts(self, name: str, option: str) -> bool | None:
        """Whether masker ``name``'s factory takes ``option``; None when it cannot be known (a
        ``**kwargs`` factory that declared no options)."""
        accepted = self.get(name).accepted
        return None if accepted is None else option in accepted

    def factory_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The keywords the factory of ``name`` is called with (see the module docstring)."""
        entry = self.get(name)
        out: dict[str, Any] = {}
        unknown = []
        for key, value in options.items():
            if entry.accepted is None:
                if key in HOST_KEYWORDS and key not in _LEGACY_HOST_KEYWORDS:
                    continue
                out[key] = value
            elif key in entry.accepted:
                out[key] = value
            elif key in HOST_KEYWORDS or (key == "weights" and value is None):
                continue
            else:
                unknown.append(key)
        if unknown:
            raise MaskerOptionError(_unexpected(name, unknown, entry.accepted or ()) + f" (plugin {entry.plugin!r})")
        return out

    def create(self, name: str, **options: Any) -> Masker:
        """Build masker ``name``: the factory gets the options it accepts (see the module docstring);
        the masker's default ``info`` is its registration."""
        entry = self.get(name)
        masker = entry.factory(**self.factory_options(name, options))
        if not isinstance(masker, Masker):
            raise TypeError(
                f"plugin {entry.plugin!r}: factory for {name!r} returned "
                f"{type(masker).__name__}, not a fader_kit Masker"
            )
        masker.registration = MaskerInfo(name=name, weights=entry.weights or "unknown")
        return masker

    def register_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Let every plugin with a ``register_commands`` hook add its ``fader-kit`` sub-commands."""
        self._load()
        for info in self.plugins():
            self._call(info, "register_commands", subparsers=subparsers)

    def register_heads(self, registrar: Callable[[str], Any]) -> None:
        """Let every plugin with a ``register_heads`` hook register head strategies and variants;
        ``registrar(plugin_name)`` gives what its hook receives as ``heads``."""
        self._load()
        for info in self.plugins():
            self._call(info, "register_heads", heads=registrar(info.name))


_default: MaskerRegistry | None = None


def default_registry(refresh: bool = False) -> MaskerRegistry:
    """The registry over the installed entry points, built once per process (``refresh`` rebuilds)."""
    global _default
    if _default is None or refresh:
        _default = MaskerRegistry()
    return _default


def create_masker(name: str, **options: Any) -> Masker:
    """Build the masker registered as ``name`` with ``options`` passed to its factory."""
    return default_registry().create(name, **options)


def list_maskers() -> list[MaskerEntry]:
    return default_registry().list()


def plugin_errors() -> list[PluginError]:
    return default_registry().errors()
