"""Masker plugins: discovered through the ``fader_kit`` entry-point group and pluggy.

Built-in maskers take the same road as third-party ones, so the road is always tested.
Each plugin is loaded and asked to register on its own: one that fails to import or raises
during registration is recorded (``plugin_errors()``) and reported by name, and the others
keep working.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .interfaces import Masker


class UnknownMaskerError(KeyError):
    """Raised for a masker name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class MaskerEntry:
    name: str
    factory: Callable[..., Masker]
    plugin: str
    summary: str = ""
    weights: str = ""


@dataclass(frozen=True)
class PluginError:
    plugin: str
    stage: str  # "import" or "register"
    error: str


@dataclass
class MaskerRegistry:
    """One plugin manager and the maskers its plugins registered.

    ``entry_points`` defaults to the installed ``fader_kit`` group; tests pass their own.
    ``extra_plugins`` are objects/modules with a ``register_maskers`` hookimpl registered
    directly (handy in notebooks).
    """

    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
    extra_plugins: Iterable[Any] = ()
    _entries: dict[str, MaskerEntry] = field(default_factory=dict, init=False)
    _errors: list[PluginError] = field(default_factory=list, init=False)
    _loaded: bool = field(default=False, init=False)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        eps = (
            self.entry_points
            if self.entry_points is not None
            else importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        )
        plugins: list[tuple[str, Any]] = []
        for ep in sorted(eps, key=lambda e: e.name):
            try:
                plugins.append((ep.name, ep.load()))
            except Exception as exc:  # a broken plugin must not take the others down
                self._record(ep.name, "import", exc)
        plugins.extend((getattr(p, "__name__", repr(p)), p) for p in self.extra_plugins)
        for plugin_name, plugin in plugins:
            try:
                pm.register(plugin, name=plugin_name)
            except Exception as exc:
                self._record(plugin_name, "register", exc)
                continue
            for impl in pm.hook.register_maskers.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                try:
                    impl.function(register=self._registrar(plugin_name))
                except Exception as exc:
                    self._record(plugin_name, "register", exc)

    def _record(self, plugin: str, stage: str, exc: BaseException) -> None:
        err = PluginError(plugin, stage, f"{type(exc).__name__}: {exc}")
        self._errors.append(err)
        warnings.warn(
            f"fader-kit plugin {plugin!r} failed at {stage}: {err.error}", RuntimeWarning, stacklevel=3
        )

    def _registrar(self, plugin: str) -> Callable[..., None]:
        def register(
            name: str, factory: Callable[..., Masker], *, summary: str = "", weights: str = ""
        ) -> None:
            if not callable(factory):
                raise TypeError(f"plugin {plugin!r}: factory for {name!r} is not callable")
            if name in self._entries:
                raise ValueError(
                    f"plugin {plugin!r} registers masker {name!r}, "
                    f"already registered by {self._entries[name].plugin!r}"
                )
            self._entries[name] = MaskerEntry(name, factory, plugin, summary, weights)

        return register

    # -- public ------------------------------------------------------------------------------
    def list(self) -> list[MaskerEntry]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def errors(self) -> list[PluginError]:
        self._load()
        return list(self._errors)

    def get(self, name: str) -> MaskerEntry:
        self._load()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            broken = "".join(
                f"\n  plugin {e.plugin!r} failed at {e.stage}: {e.error}" for e in self._errors
            )
            raise UnknownMaskerError(f"unknown masker {name!r}; registered maskers: {known}{broken}")
        return self._entries[name]

    def create(self, name: str, **options: Any) -> Masker:
        entry = self.get(name)
        masker = entry.factory(**options)
        if not isinstance(masker, Masker):
            raise TypeError(
                f"plugin {entry.plugin!r}: factory for {name!r} returned "
                f"{type(masker).__name__}, not a fader_kit Masker"
            )
        return masker


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
