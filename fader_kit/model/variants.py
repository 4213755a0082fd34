"""Named FADeR head variants: one registry, one canonical name per configuration, with aliases.

A variant is a set of changes to a profile's head configuration (:class:`~fader_kit.model.config.FaderConfig`),
named once so that ``fader-kit evaluate --fader-variant``, the benchmark tables and the Python API
mean the same thing by the same word.  Like timm's ``architecture.tag``, a name never changes
meaning; an old name stays as an alias of the canonical one (``fader`` and ``ours`` are both ``paper``).

The core holds eight: the paper's head, Table 3's four ablation columns, the control ``open_gates``,
the default head ``pseudo_focused`` and ``encoder_ear``.  The experiments of docs/results/fader-head.md
come with the ``fader_kit_experiments`` plugin (``experiments/`` in the source tree), registered through
the ``register_heads`` hook as any third-party plugin would (:mod:`fader_kit.model.head_registry`);
``fader-kit variants --all`` lists them.

Kinds: ``paper`` is FADeR exactly as the paper reads; ``ablation`` a column of the paper's Table 3;
``experiment`` goes beyond the paper; ``control`` trains like FADeR but measures what the head itself adds.
"""
from __future__ import annotations

import argparse
from typing import Any

from fader_kit.model.config import FaderConfig
from fader_kit.errors import ConfigError
from fader_kit.model.head_registry import CORE, HeadRegistrar, HeadRegistry, HeadStrategies, HeadVariant, Kind

__all__ = ["DEFAULT_HEAD_VARIANT", "CORE_VARIANTS", "HeadVariant", "Kind", "canonical_name", "default_heads",
           "get_variant", "head_strategies", "list_variants", "resolve", "variant_argument", "variant_names"]

_PSEUDO_FOCUSED = {"pseudo_anomalies": 1.0, "normaliser": "calibrated", "focus": "unmasked", "target": "ungated"}

#: the feature heads' training: against plain EAR's error, calibrated gates, unmasked patches only
FEATURE_HEAD: dict[str, Any] = {"target": "ear", "normaliser": "calibrated", "focus": "unmasked"}

CORE_VARIANTS: tuple[HeadVariant, ...] = (
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
    HeadVariant(name="open_gates", kind="control", changes={"gates": ("open",)},
                description="control: trained like FADeR but every gate stays 1, so what the head adds can be told "
                            "from what the decoder fine-tuning gives"),
    HeadVariant(name="pseudo_focused", kind="experiment", changes=dict(_PSEUDO_FOCUSED),
                description="pseudo-anomalies, calibrated and focused, target against the un-gated reconstruction "
                            "(the evaluate default)"),
    HeadVariant(name="encoder_ear", kind="experiment", changes={**FEATURE_HEAD, "head_input": ("encoder",)},
                description="encoder features, target: plain EAR's error, calibrated and focused gates"),
)

#: The head ``fader-kit evaluate`` trains unless told otherwise, chosen on the development grid
#: (MPDD metal_plate and the four synthetic categories, four maskers; docs/results/fader-head.md):
#: of the head variants it came closest to the better of EAR and the masker alone (mean -0.006 image
#: AUROC against -0.048 for ``paper``; worst cell -0.032 against EAR, ``paper`` -0.177).  Its
#: calibrated gates rarely close, so it measured no different from the control ``open_gates``: the
#: head earned no gain of its own.  The paper's tables (``bench table2..5``) keep ``paper``.
DEFAULT_HEAD_VARIANT = "pseudo_focused"

#: every core name and alias -> its variant: naming a core variant imports neither torch nor a plugin
_CORE_NAMES = {n: v for v in CORE_VARIANTS for n in (v.name, *v.aliases)}

_core: HeadRegistry | None = None
_default: HeadRegistry | None = None


def _register_core(heads: HeadRegistry) -> HeadRegistry:
    from fader_kit.model.gates import CORE_GATES
    from fader_kit.model.head_inputs import CORE_INPUTS

    HeadRegistrar(heads, CORE).add(CORE_INPUTS, CORE_GATES, CORE_VARIANTS)
    return heads


def core_heads() -> HeadRegistry:
    """The core's strategies and variants alone: what a core head needs, without importing any plugin."""
    global _core
    if _core is None:
        _core = _register_core(HeadRegistry())
    return _core


def default_heads(refresh: bool = False) -> HeadRegistry:
    """The core strategies and variants, then every installed plugin's (``register_heads``), built once
    per process (``refresh`` rebuilds).  A plugin whose registration fails is reported by
    :func:`fader_kit.maskers.registry.plugin_errors` and leaves the others working."""
    global _default
    if _default is None or refresh:
        from fader_kit.maskers.registry import default_registry

        heads = _register_core(HeadRegistry())
        _default = heads  # set first: a plugin that looks a core name up while it registers finds it
        default_registry().register_heads(lambda plugin: HeadRegistrar(heads, plugin))
    return _default


def head_strategies(config: FaderConfig) -> HeadStrategies:
    """The registered strategies ``config``'s head reads through (its inputs and its gates); plugins are
    loaded only for a head that names a strategy the core does not have."""
    core = core_heads()
    if set(config.head_input) <= set(core.inputs) and set(config.gates) <= set(core.gates):
        return core.strategies(config)
    return default_heads().strategies(config)


def list_variants(kind: Kind | None = None, core: bool = False) -> list[HeadVariant]:
    """The registered variants (of one ``kind``, or all; the core's alone with ``core=True``, which loads no
    plugin), in registration order: the core's, then each plugin's."""
    if core:
        return [v for v in CORE_VARIANTS if kind is None or v.kind == kind]
    return default_heads().list(kind)


def variant_names(aliases: bool = True, core: bool = False) -> list[str]:
    """Canonical names in registry order, then (``aliases=True``) the aliases: what a command line accepts
    (the core's alone with ``core=True``)."""
    every = CORE_VARIANTS if core else default_heads().list()
    names = [v.name for v in every]
    return names + [a for v in every for a in v.aliases] if aliases else names


def get_variant(name: str) -> HeadVariant:
    """The variant called ``name`` (canonical or alias); an unknown name is a ConfigError that
    suggests the closest and names ``fader-kit variants --all``.  A core name loads no plugin."""
    return _CORE_NAMES[name] if name in _CORE_NAMES else default_heads().get(name)


def is_core(name: str) -> bool:
    """Whether variant ``name`` is one of the core's (not a plugin's)."""
    return name in _CORE_NAMES


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


def __getattr__(name: str) -> Any:
    if name == "HEAD_VARIANTS":
        # Compatibility: the head variants (everything but Table 3's ablation columns) as name -> changes,
        # canonical names only, as ``fader_kit.model.config.HEAD_VARIANTS`` was before the registry
        return {v.name: dict(v.changes) for v in list_variants() if v.kind != "ablation"}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
