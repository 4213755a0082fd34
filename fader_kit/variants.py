"""Named FADeR head variants: one registry, one canonical name per configuration, with aliases.

A variant is a set of changes to a profile's head configuration (:class:`~fader_kit.config.FaderConfig`,
plus :class:`~fader_kit.config.HeadExperiment` switches that only variants set), named once so that
``fader-kit evaluate --fader-variant``, the benchmark tables and the Python API mean the same thing
by the same word.  Like timm's ``architecture.tag``, a name never changes meaning; an old name
stays as an alias of the canonical one (``fader`` and ``ours`` are both ``paper``).

Kinds: ``paper`` is FADeR exactly as the paper reads; ``ablation`` a column of the paper's Table 3;
``experiment`` goes beyond the paper (docs/results/fader-head.md); ``control`` trains like
FADeR but measures what the head itself adds.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import ExperimentalFaderConfig, FaderConfig, fader_config
from .errors import ConfigError

Kind = Literal["paper", "ablation", "experiment", "control"]


class HeadVariant(BaseModel):
    """One named head configuration, as changes to a profile's head configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="canonical name: what results, tables and checkpoints record")
    aliases: tuple[str, ...] = Field((), description="other names that resolve to this variant")
    kind: Kind
    description: str = Field(description="one line: what it changes and why")
    changes: dict[str, Any] = Field(default_factory=dict, description="FaderConfig / HeadExperiment fields changed")

    @property
    def label(self) -> str:
        """How a results row names this head, e.g. ``FADeR (pseudo_focused)``."""
        return f"FADeR ({self.name})"

    def apply(self, base: FaderConfig) -> FaderConfig:
        """``base`` with this variant's changes, validated (plain FaderConfig unless an experimental
        switch is set)."""
        return fader_config({**base.model_dump(), **self.changes})


_PSEUDO_FOCUSED = {"pseudo_anomalies": 1.0, "normaliser": "calibrated", "focus": "unmasked", "target": "ungated"}

#: the feature heads' training: against plain EAR's error, calibrated gates, unmasked patches only
_FEATURE_HEAD = {"target": "ear", "normaliser": "calibrated", "focus": "unmasked"}

_VARIANTS: tuple[HeadVariant, ...] = (
    HeadVariant(name="paper", aliases=("fader", "ours"), kind="paper",
                description="FADeR as the paper reads: MLP head, soft mask, min-max normaliser, nearest Theta"),
    # Table 3's ablation columns
    HeadVariant(name="vit", kind="ablation", changes={"head": "vit"},
                description="Table 3: a small ViT over the patch tokens instead of the per-patch MLP"),
    HeadVariant(name="hard", kind="ablation", changes={"masking": "hard"},
                description="Table 3: binary gates (0 above hard_threshold) instead of the soft mask"),
    HeadVariant(name="bilinear", kind="ablation", changes={"theta": "bilinear"},
                description="Table 3: bilinear Theta (gate resize) instead of nearest"),
    HeadVariant(name="sigmoid", kind="ablation", changes={"normaliser": "sigmoid"},
                description="Table 3's extra column: sigmoid of the per-image z-score instead of min-max"),
    # beyond the paper, one change at a time (docs/results/fader-head.md)
    HeadVariant(name="calibrated", kind="experiment", changes={"normaliser": "calibrated"},
                description="one fixed gate scale from normal training images, so a normal image keeps its skips open"),
    HeadVariant(name="ungated", kind="experiment", changes={"target": "ungated"},
                description="Eq. 1's target against the un-gated reconstruction (what plain EAR gets wrong)"),
    HeadVariant(name="neighbours", kind="experiment", changes={"context": "neighbours"},
                description="head input: the 3m x 3m window around each patch instead of the patch alone"),
    HeadVariant(name="pseudo", kind="experiment", changes={"pseudo_anomalies": 1.0},
                description="pseudo-anomalies: a colour-shifted square of another training image pasted in"),
    HeadVariant(name="pseudo_calibrated", kind="experiment",
                changes={"pseudo_anomalies": 1.0, "normaliser": "calibrated"},
                description="pseudo-anomalies with calibrated gates"),
    # the control (kept where it stood among the head variants: tables list their columns in this order)
    HeadVariant(name="open_gates", kind="control", changes={"gates": "open"},
                description="control: trained like FADeR but every gate stays 1, so what the head adds can be told "
                            "from what the decoder fine-tuning gives"),
    HeadVariant(name="focused", kind="experiment", changes={"normaliser": "calibrated", "focus": "unmasked"},
                description="calibrated gates; Eq. 3 and the calibration on unmasked patches only"),
    HeadVariant(name="pseudo_focused", kind="experiment", changes=dict(_PSEUDO_FOCUSED),
                description="pseudo-anomalies, calibrated and focused, target against the un-gated reconstruction "
                            "(the evaluate default)"),
    HeadVariant(name="procedural", kind="experiment",
                changes={"pseudo_anomalies": 1.0, "pseudo_source": "procedural", "focus": "unmasked",
                         "target": "ungated"},
                description="procedurally generated pseudo-anomalies, focused, un-gated target, min-max gates"),
    HeadVariant(name="procedural_focused", kind="experiment",
                changes={**_PSEUDO_FOCUSED, "pseudo_source": "procedural"},
                description="procedurally generated pseudo-anomalies with the pseudo_focused head"),
    # round 3: what the head reads, what it is trained against, and gates from the masker's score
    HeadVariant(name="ear_target", kind="experiment", changes={"target": "ear"},
                description="the paper's head trained against the error of the frozen plain EAR U-Net (eval mode)"),
    HeadVariant(name="stats", kind="experiment", changes={"head_input": "stats"},
                description="the paper's head on seven statistics per patch (mean, std of R, G, B; gradient energy)"),
    HeadVariant(name="encoder", kind="experiment", changes={"head_input": "encoder"},
                description="the paper's head on the frozen U-Net encoder's feature at each patch"),
    HeadVariant(name="stats_ear", kind="experiment", changes={**_FEATURE_HEAD, "head_input": "stats"},
                description="patch statistics, target: plain EAR's error, calibrated and focused gates"),
    HeadVariant(name="encoder_ear", kind="experiment", changes={**_FEATURE_HEAD, "head_input": "encoder"},
                description="encoder features, target: plain EAR's error, calibrated and focused gates"),
    HeadVariant(name="stats_score_ear", kind="experiment",
                changes={**_FEATURE_HEAD, "head_input": "stats", "score_input": True},
                description="patch statistics and the masker's score at the patch, target: plain EAR's error, "
                            "calibrated and focused gates"),
    HeadVariant(name="score_gates", kind="experiment", changes={"gates": "score", "normaliser": "calibrated"},
                description="no learned head: gates from the masker's score, 1 up to its normal quantile and 0 "
                            "at median + width * (quantile - median); the decoder fine-tuned with them"),
    HeadVariant(name="masked_gate_one", kind="experiment", changes={"masked_gate": "one"},
                description="the paper's head with the gate forced to 1 on every patch holding an M_B pixel"),
    HeadVariant(name="score_gates_one", kind="experiment",
                changes={"gates": "score", "normaliser": "calibrated", "masked_gate": "one"},
                description="score_gates with the gate forced to 1 on masked patches"),
    HeadVariant(name="score_gates_q95", kind="experiment",
                changes={"gates": "score", "normaliser": "calibrated", "calibration_quantile": 0.95},
                description="score_gates opening only up to the 95th percentile of the normal patch scores"),
    HeadVariant(name="stats_ear_q95", kind="experiment",
                changes={**_FEATURE_HEAD, "head_input": "stats", "calibration_quantile": 0.95},
                description="stats_ear with gates opening only up to the 95th percentile of normal l_hat"),
    HeadVariant(name="stats_calibrated", kind="experiment", changes={"head_input": "stats", "normaliser": "calibrated"},
                description="patch statistics, the paper's target and pairs, calibrated gates"),
    HeadVariant(name="stats_ear_all", kind="experiment",
                changes={"head_input": "stats", "target": "ear", "normaliser": "calibrated"},
                description="patch statistics, target: plain EAR's error over every patch, calibrated gates"),
    HeadVariant(name="stats_score", kind="experiment",
                changes={"head_input": "stats", "score_input": True, "normaliser": "calibrated"},
                description="patch statistics and the masker's score, the paper's target and pairs, calibrated gates"),
    HeadVariant(name="encoder_calibrated", kind="experiment",
                changes={"head_input": "encoder", "normaliser": "calibrated"},
                description="encoder features, the paper's target and pairs, calibrated gates"),
    HeadVariant(name="encoder_ear_one", kind="experiment",
                changes={**_FEATURE_HEAD, "head_input": "encoder", "masked_gate": "one"},
                description="encoder_ear with the gate forced to 1 on masked patches"),
    HeadVariant(name="backbone", kind="experiment", changes={"head_input": "backbone"},
                description="the paper's head on a frozen ImageNet CNN's features at each patch (EfficientNet-Lite0, "
                            "stride 8 and 16)"),
    HeadVariant(name="backbone_ear", kind="experiment", changes={**_FEATURE_HEAD, "head_input": "backbone"},
                description="ImageNet CNN features, target: plain EAR's error, calibrated and focused gates"),
    HeadVariant(name="score_gates_threshold", kind="experiment",
                changes={"gates": "score", "normaliser": "calibrated", "focus": "unmasked", "gate_end": "threshold"},
                description="no learned head: gates from the masker's score, 1 up to the normal unmasked patches' "
                            "quantile and 0 at the masker's own threshold"),
    HeadVariant(name="score_gates_threshold_one", kind="experiment",
                changes={"gates": "score", "normaliser": "calibrated", "focus": "unmasked", "gate_end": "threshold",
                         "masked_gate": "one"},
                description="score_gates_threshold with the gate forced to 1 on masked patches (the mosaic hint "
                            "stays in the skips)"),
    HeadVariant(name="stats_ear_one", kind="experiment",
                changes={**_FEATURE_HEAD, "head_input": "stats", "masked_gate": "one"},
                description="stats_ear with the gate forced to 1 on masked patches"),
)

#: The head ``fader-kit evaluate`` trains unless told otherwise, chosen on the development grid
#: (MPDD metal_plate and the four synthetic categories, four maskers; docs/results/fader-head.md):
#: of the head variants it came closest to the better of EAR and the masker alone (mean -0.006 image
#: AUROC against -0.048 for ``paper``; worst cell -0.032 against EAR, ``paper`` -0.177).  Its
#: calibrated gates rarely close, so it measured no different from the control ``open_gates``: the
#: head earned no gain of its own.  The paper's tables (``bench table2..5``) keep ``paper``.
DEFAULT_HEAD_VARIANT = "pseudo_focused"


def _index(variants: tuple[HeadVariant, ...]) -> dict[str, HeadVariant]:
    """Every name and alias -> its variant; refuses a name given twice and a change that is no
    head setting, so a broken registry fails at import, not in the middle of a run."""
    fields = set(ExperimentalFaderConfig.model_fields)
    out: dict[str, HeadVariant] = {}
    for v in variants:
        unknown = set(v.changes) - fields
        if unknown:
            raise ConfigError(f"head variant {v.name!r} changes unknown field(s) {', '.join(sorted(unknown))}")
        v.apply(FaderConfig())  # validates the changes
        for name in (v.name, *v.aliases):
            if name in out:
                raise ConfigError(f"head variant name {name!r} is used twice")
            out[name] = v
    return out


_BY_NAME = _index(_VARIANTS)


def list_variants(kind: Kind | None = None) -> list[HeadVariant]:
    """The registered variants (of one ``kind``, or all), in registry order."""
    return [v for v in _VARIANTS if kind is None or v.kind == kind]


def variant_names(aliases: bool = True) -> list[str]:
    """Canonical names in registry order, then (``aliases=True``) the aliases: what a command line accepts."""
    names = [v.name for v in _VARIANTS]
    return names + [a for v in _VARIANTS for a in v.aliases] if aliases else names


def get_variant(name: str) -> HeadVariant:
    """The variant called ``name`` (canonical or alias); an unknown name is a ConfigError that lists
    the names and suggests the closest."""
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown FADeR variant {name!r}{hint} (choose one of "
                          f"{', '.join(variant_names(aliases=False))}; aliases: "
                          f"{', '.join(a for v in _VARIANTS for a in v.aliases)})") from None


def canonical_name(name: str) -> str:
    """The canonical name of ``name`` (``fader`` -> ``paper``)."""
    return get_variant(name).name


def variant_argument(text: str) -> str:
    """argparse ``type=`` of a head variant option: the canonical name of ``text`` (an alias is
    recorded under its canonical name), or the registry's message with the names."""
    try:
        return canonical_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve(base: FaderConfig, name: str) -> FaderConfig:
    """``base`` (a profile's head configuration) with the changes of variant ``name``."""
    return get_variant(name).apply(base)


#: Compatibility: the head variants (everything but Table 3's ablation columns) as name -> changes,
#: canonical names only, as ``fader_kit.config.HEAD_VARIANTS`` was before the registry.
HEAD_VARIANTS: dict[str, dict[str, object]] = {
    v.name: dict(v.changes) for v in _VARIANTS if v.kind != "ablation"
}
