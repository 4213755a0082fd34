"""``torch.load`` that never runs code: tensors and plain values only (``weights_only=True``).

A model file travels from the machine that trained it to the one that runs it; a pickle can
execute anything while it is read, so every torch file fader-kit reads goes through here and a
file holding other objects is refused with :class:`~fader_kit.errors.UnsafeFileError`.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from fader_kit.errors import UnsafeFileError


def torch_load_safe(path: str | Path, what: str = "file", map_location: Any = "cpu") -> Any:
    """The content of torch file ``path`` (``weights_only=True``); an UnsafeFileError naming
    ``what`` and ``path`` when it holds anything but tensors, numbers, strings, lists and dicts."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text.lower():
            raise  # not a refusal (e.g. "Unsupported operand"): a damaged or foreign file, for the caller to report
        found = re.search(r"Unsupported global: (GLOBAL \S+)", text)
        what_global = f"it asks for {found.group(1)}" if found else "it holds pickled Python objects"
        raise UnsafeFileError(
            f"refused to load {what} {path}: {what_global}, not only tensors and plain values, and loading it could "
            "run code. Re-save it from trusted code as tensors and plain values, or as .safetensors") from None
