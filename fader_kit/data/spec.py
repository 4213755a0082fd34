"""Parsing the ``--data`` argument: ``synthetic``, ``mvtec:PATH`` or ``visa:PATH``."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from fader_kit.data.split import DataError

DataKind = Literal["synthetic", "mvtec", "visa"]
_KINDS: tuple[str, ...] = ("synthetic", "mvtec", "visa")
_USAGE = "expected 'synthetic', 'mvtec:PATH' or 'visa:PATH'"


class DataSpec(BaseModel):
    """Which data set, and where it lives.

    ``path`` is required to *load* MVTec AD or VisA (there is no download: the machine may be
    offline); a path-less spec still answers :func:`fader_kit.data.list_categories` with the
    official category names.  The synthetic data needs no path: it is generated into a cache.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: DataKind
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_data_spec(text: str | DataSpec, *, argument: str = "data", require_path: bool = True) -> DataSpec:
    """Turn ``"synthetic"``, ``"mvtec:PATH"`` or ``"visa:PATH"`` into a :class:`DataSpec`.

    Only the first ``:`` separates kind from path, so Windows drive letters survive.  ``~`` is
    expanded.  Raises :class:`DataError` (a ``ValueError``) naming ``argument`` for anything else.
    """
    if isinstance(text, DataSpec):
        spec = text
    else:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"argument {argument}={text!r}: {_USAGE}")
        kind, sep, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in _KINDS:
            raise DataError(f"argument {argument}={text!r}: unknown data set {kind!r}; {_USAGE}")
        if kind == "synthetic" and sep:
            raise DataError(
                f"argument {argument}={text!r}: 'synthetic' takes no path (it is generated into the cache); "
                "to load generated files from a folder use 'mvtec:PATH'"
            )
        if sep and not rest.strip():
            raise DataError(f"argument {argument}={text!r}: empty path after '{kind}:'; {_USAGE}")
        spec = DataSpec(kind=kind, path=Path(rest.strip()).expanduser() if sep else None)
    if require_path and spec.kind != "synthetic" and spec.path is None:
        raise DataError(f"argument {argument}={str(spec)!r}: {spec.kind} needs a folder, as '{spec.kind}:PATH'")
    return spec
