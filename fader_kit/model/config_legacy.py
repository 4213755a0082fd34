"""Head configurations as they were written before the head became a composition of strategies.

Up to fader-kit 0.1 a head's input and gates were eight flat fields (``context``, ``head_input``,
``score_input``, ``gates``, ``masked_gate``, ``gate_end`` beside ``pseudo_area`` / ``pseudo_source``),
stored in checkpoints, detector folders and cache keys.  Today the head names registered strategies
(:attr:`~fader_kit.model.config.FaderConfig.head_input`, :attr:`~fader_kit.model.config.FaderConfig.gates`).  This
module is the one table between the two spellings: an old dump loads as the same head, and a head
that the old fields could describe keeps the old cache-key payload byte for byte, so every cache
entry and stored row keeps its key.  It knows the old *names* only, never what a strategy does.
"""
from __future__ import annotations

from typing import Any

#: the flat fields of the old spelling (``head_input`` and ``gates`` were single strings then)
LEGACY_FIELDS = ("context", "head_input", "score_input", "gates", "masked_gate", "gate_end")

#: old main input -> strategy name (``context="neighbours"`` turned the pixels into the window around them)
_INPUTS = {"pixels": "pixels", "stats": "stats", "encoder": "encoder", "backbone": "backbone"}
_NEIGHBOURS, _SCORE_INPUT = "neighbours", "score"
#: gate modifiers of the old spelling, in the order a translated head lists them
_MODIFIERS = (("gate_end", "threshold", "threshold_end"), ("masked_gate", "one", "masked_one"))


def is_legacy(data: dict[str, Any]) -> bool:
    """Whether ``data`` spells its head the old way (a string ``head_input`` / ``gates`` or a removed field)."""
    return (isinstance(data.get("head_input"), str) or isinstance(data.get("gates"), str)
            or any(k in data for k in ("context", "score_input", "masked_gate", "gate_end")))


def from_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old flat fields replaced by the strategy lists they meant."""
    out = {k: v for k, v in data.items() if k not in LEGACY_FIELDS}
    main = data.get("head_input", "pixels")
    if not isinstance(main, str) or main not in _INPUTS:
        raise ValueError(f"head_input {main!r} mixes the old spelling (context, score_input, masked_gate, gate_end, "
                         "string head_input / gates) with the new one (lists of strategy names)")
    context = data.get("context", "token")
    if context not in ("token", _NEIGHBOURS):
        raise ValueError(f"unknown head context {context!r}; use 'token' or 'neighbours'")
    if context == _NEIGHBOURS and main != "pixels":
        raise ValueError(f"context='neighbours' widens the pixel input; head_input={main!r} reads no pixels")
    inputs = [_NEIGHBOURS if context == _NEIGHBOURS else _INPUTS[main]]
    if data.get("score_input", False):
        inputs.append(_SCORE_INPUT)
    gates = data.get("gates", "head")
    if not isinstance(gates, str):
        raise ValueError(f"gates {gates!r} mixes the old spelling with the new one (a list of strategy names)")
    chain = [gates]
    for field, value, strategy in _MODIFIERS:
        given = data.get(field)
        if given is not None and given not in (value, _default(field)):
            raise ValueError(f"unknown {field} {given!r}; use {_default(field)!r} or {value!r}")
        if given == value:
            chain.append(strategy)
    return {**out, "head_input": tuple(inputs), "gates": tuple(chain)}


def _default(field: str) -> str:
    return {"gate_end": "spread", "masked_gate": "head"}[field]


def to_legacy(head_input: tuple[str, ...], gates: tuple[str, ...]) -> dict[str, Any] | None:
    """The old flat fields of a head, or None when the old spelling cannot describe it (a strategy
    registered since): every field, defaults included, in the order the old payload listed them."""
    main, *rest = head_input
    if rest not in ([], [_SCORE_INPUT]) or main not in (*_INPUTS, _NEIGHBOURS):
        return None
    source, *mods = gates
    order = [strategy for _, _, strategy in _MODIFIERS]
    if source not in ("head", "open", "score") or any(m not in order for m in mods) or \
            mods != sorted(mods, key=order.index) or len(set(mods)) != len(mods):
        return None
    return {
        "context": _NEIGHBOURS if main == _NEIGHBOURS else "token", "gates": source,
        "head_input": "pixels" if main == _NEIGHBOURS else main, "score_input": bool(rest),
        "masked_gate": "one" if "masked_one" in mods else "head",
        "gate_end": "threshold" if "threshold_end" in mods else "spread",
    }


#: the old defaults of the fields that entered the cache key only when set
LEGACY_OPTIONAL = {"head_input": "pixels", "score_input": False, "masked_gate": "head", "gate_end": "spread"}
