"""pluggy hook specifications of fader-kit.

A plugin is a module (or object) exposing ``register_maskers`` decorated with :data:`hookimpl`,
announced through the ``fader_kit`` entry-point group::

    [project.entry-points.fader_kit]
    my_masker = "my_package.plugin"

and in ``my_package/plugin.py``::

    from fader_kit.hookspecs import hookimpl

    @hookimpl
    def register_maskers(register):
        register("my_masker", MyMasker, summary="what it does", weights="none")
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

PROJECT = "fader_kit"
ENTRY_POINT_GROUP = "fader_kit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterFn(Protocol):
    def __call__(
        self, name: str, factory: Callable[..., Any], *, summary: str = "", weights: str = ""
    ) -> None: ...


@hookspec
def register_maskers(register: RegisterFn) -> None:
    """Call ``register(name, factory, summary=..., weights=...)`` once per masker.

    ``factory(**options)`` must return a :class:`fader_kit.interfaces.Masker`.  ``weights`` is
    the default weights source shown by ``fader-kit maskers`` (e.g. ``hub:vit_small_patch16_224.dino``).
    """
