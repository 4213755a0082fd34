"""``KEY=VALUE`` options from a command line or a spec string (``msflow:k=1,q=0.99``)."""
from __future__ import annotations

import json
from typing import Any, Iterable

from fader_kit.errors import ConfigError


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists, null), the plain string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Iterable[str] | None, argument: str = "--masker-option") -> dict[str, Any]:
    """``["k=4", "name=x"]`` -> ``{"k": 4, "name": "x"}``; a pair without ``=`` names ``argument``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"argument {argument} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out
