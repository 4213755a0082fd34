"""The names of the fused score's rules and the default, without importing torch (the command
line's ``--help`` reads them); the rules themselves are :func:`fader_kit.fusion.fit_fusion`."""
from __future__ import annotations

from typing import Literal

FusionRule = Literal["sum", "max", "select", "pseudo"]
FUSION_RULES: tuple[FusionRule, ...] = ("sum", "max", "select", "pseudo")

#: the rule of a bare ``--fused``: on MPDD and MVTec 3D-AD ``tire`` no interval against the better of the two
#: maps alone fell below 0, where ``sum`` fell 0.058 below it (docs/results/fader-head-round4.md)
DEFAULT_FUSION_RULE: FusionRule = "pseudo"
