"""The names of the fused score's rules, the default, and how a ``fused`` setting names a rule,
without importing torch (the command line's ``--help`` and the cache keys read them); the rules
themselves are :func:`fader_kit.model.fusion.fit_fusion`."""
from __future__ import annotations

from typing import Literal, Union

FusionRule = Literal["sum", "max", "select", "pseudo"]
FUSION_RULES: tuple[FusionRule, ...] = ("sum", "max", "select", "pseudo")

#: the rule of a bare ``--fused``: on MPDD and MVTec 3D-AD ``tire`` no interval against the better of the two
#: maps alone fell below 0, where ``sum`` fell 0.058 below it (docs/results/fader-head-round4.md)
DEFAULT_FUSION_RULE: FusionRule = "pseudo"

Fused = Union[bool, FusionRule]
"""How a grid asks for the fused score: False (none), True (the default rule) or a rule's name."""


def unknown_rule(rule: object) -> ValueError:
    return ValueError(f"unknown fusion rule {rule!r}; use {', '.join(map(repr, FUSION_RULES))}")


def fusion_rule(fused: Fused | None) -> FusionRule | None:
    """The rule a ``fused`` setting asks for: None for False, :data:`DEFAULT_FUSION_RULE` for True, else
    the name itself."""
    if fused is False or fused is None:
        return None
    if fused is True:
        return DEFAULT_FUSION_RULE
    if fused not in FUSION_RULES:
        raise unknown_rule(fused)
    return fused
