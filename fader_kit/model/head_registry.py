"""The registry of FADeR head strategies and named head variants.

Two kinds of strategy, one interface each: :class:`~fader_kit.model.head_inputs.HeadInput` (what the
head reads per patch) and :class:`~fader_kit.model.gates.GateStrategy` (how l_hat becomes gates); and
:class:`HeadVariant`, a named set of changes to a head configuration.  The core registers its own
(:mod:`fader_kit.model.variants`); a plugin registers more through the ``register_heads`` hook, exactly
like a masker plugin::

    from fader_kit.maskers.hookspecs import hookimpl

    @hookimpl
    def register_heads(heads):
        heads.gate(MyGate)
        heads.variant(HeadVariant(name="my_head", kind="experiment", description="...",
                                  changes={"gates": ["my_gate"]}))

The model (:class:`~fader_kit.model.fader.FaderModel`) asks the registry for the strategies its
configuration names (:meth:`HeadRegistry.strategies`) and never looks at a variant.
"""
from __future__ import annotations

import builtins
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from fader_kit.model.config import FaderConfig, fader_config
from fader_kit.errors import ConfigError

if TYPE_CHECKING:  # the strategies import torch; naming variants (a command line's help) must not
    from fader_kit.model.gates import GateStrategy
    from fader_kit.model.head_inputs import HeadInput, HeadInputs

Kind = Literal["paper", "ablation", "experiment", "control"]
CORE = "core"
#: what an unknown name's error points to
LIST_HINT = "`fader-kit variants --all` lists every installed variant and where it comes from"


class HeadVariant(BaseModel):
    """One named head configuration, as changes to a profile's head configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="canonical name: what results, tables and checkpoints record")
    aliases: tuple[str, ...] = Field((), description="other names that resolve to this variant")
    kind: Kind
    description: str = Field(description="one line: what it changes and why")
    changes: dict[str, Any] = Field(default_factory=dict, description="FaderConfig fields changed")

    @property
    def label(self) -> str:
        """How a results row names this head, e.g. ``FADeR (pseudo_focused)``."""
        return f"FADeR ({self.name})"

    def apply(self, base: FaderConfig) -> FaderConfig:
        """``base`` with this variant's changes, validated."""
        return fader_config({**base.model_dump(), **self.changes})


@dataclass(frozen=True)
class HeadStrategies:
    """The strategies a head configuration names, built for it: its inputs and its gate chain."""

    inputs: HeadInputs
    gates: GateStrategy

    @property
    def reads_scores(self) -> bool:
        """Whether the head or its gates read the masker's continuous score map."""
        return self.inputs.reads_scores or self.gates.reads_scores

    @property
    def reads_threshold(self) -> bool:
        """Whether the gates need the fitted masker's threshold."""
        return self.gates.reads_threshold


@dataclass
class HeadRegistry:
    """Input strategies, gate strategies and variants by name, each with the plugin that registered it."""

    inputs: dict[str, type[HeadInput]] = field(default_factory=dict)
    gates: dict[str, type[GateStrategy]] = field(default_factory=dict)
    variants: dict[str, HeadVariant] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)

    def register_input(self, strategy: type[HeadInput], plugin: str = CORE) -> None:
        from fader_kit.model.head_inputs import HeadInput

        self._add(self.inputs, "head input", strategy, HeadInput, plugin)

    def register_gate(self, strategy: type[GateStrategy], plugin: str = CORE) -> None:
        from fader_kit.model.gates import GateStrategy

        self._add(self.gates, "gate strategy", strategy, GateStrategy, plugin)

    @staticmethod
    def _add(table: dict[str, Any], what: str, strategy: Any, base: type, plugin: str) -> None:
        name = str(getattr(strategy, "name", ""))
        if not (isinstance(strategy, type) and issubclass(strategy, base)) or not name:
            raise TypeError(f"{what} {strategy!r} of plugin {plugin!r} is no named {base.__name__} subclass")
        if name in table:
            raise ConfigError(f"{what} {name!r} of plugin {plugin!r} is already registered")
        table[name] = strategy

    def register_variant(self, variant: HeadVariant, plugin: str = CORE) -> None:
        """Add ``variant``; refuses a name given twice and a change that is no head setting or names no
        registered strategy, so a broken registration fails when it is made, not in a run."""
        unknown = set(variant.changes) - set(FaderConfig.model_fields)
        if unknown:
            raise ConfigError(f"head variant {variant.name!r} changes unknown field(s) {', '.join(sorted(unknown))}")
        self.strategies(variant.apply(FaderConfig()))  # validates the changes and the strategy names
        for name in (variant.name, *variant.aliases):
            if name in self._names:
                raise ConfigError(f"head variant name {name!r} of plugin {plugin!r} is used twice")
        for name in (variant.name, *variant.aliases):
            self._names[name] = variant.name
        self.variants[variant.name] = variant
        self.origin[variant.name] = plugin

    def strategies(self, config: FaderConfig) -> HeadStrategies:
        """The strategies ``config`` names, built for it (an unknown name is a ConfigError)."""
        from fader_kit.model.head_inputs import HeadInputs

        parts = [self._get(self.inputs, "head input", n)(config) for n in config.head_input]
        source, *modifiers = [self._get(self.gates, "gate strategy", n) for n in config.gates]
        if source.modifier or any(not m.modifier for m in modifiers):
            raise ConfigError(f"gates {list(config.gates)}: one source strategy first, then modifiers only")
        gates = source(config)
        for m in modifiers:
            gates = m(config, gates)
        return HeadStrategies(HeadInputs(parts), gates)

    @staticmethod
    def _get(table: dict[str, Any], what: str, name: str) -> Any:
        if name not in table:
            raise ConfigError(f"unknown {what} {name!r} (registered: {', '.join(table)}); a plugin may register it: "
                              f"{LIST_HINT}")
        return table[name]

    def has(self, name: str) -> bool:
        """Whether ``name`` is a registered variant's name or alias."""
        return name in self._names

    def get(self, name: str) -> HeadVariant:
        """The variant called ``name`` (canonical or alias); an unknown name is a ConfigError that names
        the closest one and how to list them all."""
        if name in self._names:
            return self.variants[self._names[name]]
        close = difflib.get_close_matches(name, list(self._names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown FADeR variant {name!r}{hint} (installed: {', '.join(self.variants)}); "
                          f"{LIST_HINT} (the experiment variants need the fader_kit_experiments plugin)")

    def list(self, kind: Kind | None = None) -> list[HeadVariant]:
        """The variants (of one ``kind``, or all) in registration order."""
        return [v for v in self.variants.values() if kind is None or v.kind == kind]

    def aliases(self) -> "builtins.list[str]":
        return [a for v in self.list() for a in v.aliases]


@dataclass(frozen=True)
class HeadRegistrar:
    """What a plugin's ``register_heads(heads)`` hook receives: registration on behalf of that plugin."""

    registry: HeadRegistry
    plugin: str

    def input(self, strategy: type[HeadInput]) -> None:
        """Register a :class:`~fader_kit.model.head_inputs.HeadInput` subclass under its ``name``."""
        self.registry.register_input(strategy, self.plugin)

    def gate(self, strategy: type[GateStrategy]) -> None:
        """Register a :class:`~fader_kit.model.gates.GateStrategy` subclass under its ``name``."""
        self.registry.register_gate(strategy, self.plugin)

    def variant(self, variant: HeadVariant) -> None:
        """Register a named :class:`HeadVariant` (after the strategies it names)."""
        self.registry.register_variant(variant, self.plugin)

    def add(self, inputs: Iterable[type[HeadInput]] = (), gates: Iterable[type[GateStrategy]] = (),
            variants: Iterable[HeadVariant] = ()) -> None:
        """Register ``inputs``, then ``gates``, then ``variants``: the order a variant's check needs."""
        for strategy in inputs:
            self.input(strategy)
        for gate in gates:
            self.gate(gate)
        for variant in variants:
            self.variant(variant)
