"""pluggy hook specifications of fader-kit.

A plugin is a module exposing functions decorated with :data:`hookimpl`, announced through the
``fader_kit`` entry-point group (the entry point names the *module*, not a function)::

    [project.entry-points.fader_kit]
    my_masker = "my_package.plugin"

and in ``my_package/plugin.py``::

    from fader_kit.maskers.hookspecs import hookimpl

    @hookimpl
    def register_maskers(register):
        register("my_masker", MyMasker, summary="what it does", weights="none")

A hook implementation may take any subset of its hook's arguments (pluggy passes only the ones
it names).  The registry refuses, with the plugin's name, a hook name fader-kit does not know, a
hook function without ``@hookimpl`` and an entry point that names a function.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Iterable, Protocol

import pluggy
from pydantic import BaseModel

PROJECT = "fader_kit"
ENTRY_POINT_GROUP = "fader_kit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterFn(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        summary: str = "",
        weights: str = "",
        options: type[BaseModel] | Iterable[str] | None = None,
    ) -> None: ...


@hookspec
def register_maskers(register: RegisterFn) -> None:
    """Call ``register(name, factory, summary=..., weights=..., options=...)`` once per masker.

    ``factory(**options)`` (often the Masker subclass itself) must return a
    :class:`fader_kit.maskers.interfaces.Masker`.  It is called with only the keywords its signature
    names; ``options`` (a pydantic model or a list of names) declares what a ``**kwargs``
    factory accepts, so that an unknown option is refused before the factory runs.  ``weights``
    is the default weights source shown by ``fader-kit maskers`` and, unless the masker
    overrides ``info``, recorded with every result (e.g. ``none`` or
    ``hub:vit_small_patch16_224.dino``).
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to ``fader-kit``: ``p = subparsers.add_parser(...)`` and
    ``p.set_defaults(func=callable)``, where ``callable(args) -> int`` is the exit status.

    Errors a user can fix should be raised as ``ValueError`` / ``FileNotFoundError``: the CLI
    prints them as one ``error:`` line."""


@hookspec
def register_heads(heads: Any) -> None:
    """Register FADeR head strategies and named head variants: ``heads.input(HeadInputSubclass)``,
    ``heads.gate(GateStrategySubclass)``, ``heads.variant(HeadVariant(...))``
    (:class:`fader_kit.model.head_registry.HeadRegistrar`; docs/writing-a-head.md).  Strategies first: a
    variant is checked against the strategies registered so far."""
