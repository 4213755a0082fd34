"""The package version, in a module of its own: every module that states it (``--version``, the
``created_by`` of a detector folder, an ONNX graph's producer) imports it from here, so none of
them imports the package's ``__init__`` (which re-exports it)."""
from __future__ import annotations

__version__ = "0.1.0"
