"""What the masker registry (:mod:`fader_kit.maskers.registry`) records and how it checks options: a
registered masker's entry, a plugin's record and failure, the host keywords every factory is
offered, and the one error type for a bad option (:class:`MaskerOptionError`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from fader_kit.errors import UserError
from fader_kit.maskers.interfaces import Masker

#: Keywords the host offers to every masker factory; left out where the factory does not take them.
HOST_KEYWORDS = frozenset({"device", "seed", "category", "allow_random_weights"})
#: The host keywords fader-kit 0.1 always passed: still passed to a ``**kwargs`` factory that
#: declares no options (``category`` is not: an undeclared factory may validate strictly).
_LEGACY_HOST_KEYWORDS = frozenset({"device", "seed", "allow_random_weights"})

M = TypeVar("M", bound=BaseModel)


class UnknownMaskerError(UserError, KeyError):
    """Raised for a masker name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class MaskerOptionError(UserError, ValueError, TypeError):
    """An option a masker does not accept, or a bad value for one.

    A ValueError (the CLI prints it as one ``error:`` line) and, for callers written against
    Python's own unexpected-keyword error, a TypeError too."""


@dataclass(frozen=True)
class MaskerEntry:
    name: str
    factory: Callable[..., Masker]
    plugin: str
    summary: str = ""
    weights: str = ""
    accepted: frozenset[str] | None = None  # None: a **kwargs factory that declared no options
    distribution: str = ""


@dataclass(frozen=True)
class PluginError:
    plugin: str
    stage: str  # import | load | register | commands | duplicate | empty | env
    error: str

    def __str__(self) -> str:
        if self.stage in ("duplicate", "empty", "env"):  # the plugin works; something is ignored
            return f"plugin {self.plugin!r}: {self.error}"
        return f"plugin {self.plugin!r} failed at {self.stage}: {self.error}"


@dataclass
class PluginInfo:
    name: str
    target: str  # the entry point's value, or the object's repr
    distribution: str = ""  # "name version", empty when not from an installed distribution
    builtin: bool = False
    hooks: tuple[str, ...] = ()
    maskers: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | failed | skipped


def option_names(options: type[BaseModel] | Iterable[str] | None) -> frozenset[str] | None:
    if options is None:
        return None
    if isinstance(options, type) and issubclass(options, BaseModel):
        return frozenset(options.model_fields)
    if isinstance(options, str):
        raise TypeError("options= must be a pydantic model or a list of names, not a string")
    return frozenset(options)


def masker_config(model: type[M], masker: str, options: Mapping[str, Any]) -> M:
    """Build a masker's pydantic config from factory options; an unknown option or a bad value
    is one :class:`MaskerOptionError` naming the masker, the option and the accepted ones."""
    accepted = sorted(model.model_fields)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MaskerOptionError(_unexpected(masker, unknown, accepted))
    try:
        return model(**options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise MaskerOptionError(
            f"invalid options for masker {masker!r}: {problems} (accepted: {', '.join(accepted)})"
        ) from None


def _unexpected(masker: str, unknown: Iterable[str], accepted: Iterable[str]) -> str:
    return (f"invalid options for masker {masker!r}: unexpected option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}")


__all__ = ["HOST_KEYWORDS", "MaskerEntry", "MaskerOptionError", "PluginError", "PluginInfo", "UnknownMaskerError",
           "masker_config", "option_names"]
