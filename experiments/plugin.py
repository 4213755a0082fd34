"""The plugin module of the ``fader_kit`` entry point ``experiments``: registers the strategies, then the variants."""
from __future__ import annotations

from fader_kit.model.head_registry import HeadRegistrar
from fader_kit.maskers.hookspecs import hookimpl

from .gates import GATES
from .inputs import INPUTS
from .variants import VARIANTS


@hookimpl
def register_heads(heads: HeadRegistrar) -> None:
    heads.add(INPUTS, GATES, VARIANTS)
