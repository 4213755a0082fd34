"""A nested state (a masker's ``state_dict()``, a model's) as one ``.safetensors`` file plus JSON.

Neither format can run code when it is read, unlike a pickle: tensors go to safetensors under
their path in the nesting (``modules/encoder/0.weight``), every other value stays in a JSON tree
where each tensor is replaced by ``{"__tensor__": "<path>"}``.  Tuples come back as lists (JSON
has no tuples); anything that is neither a tensor nor a JSON value is refused at save time, with
its path, so a state that cannot be reloaded safely is never written.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fader_kit.errors import ModelDirError
from fader_kit.util.files import atomic_write

TENSOR_KEY = "__tensor__"


def split_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """``(json_tree, tensors)``: ``state`` with its tensors replaced by references to ``tensors``."""
    tensors: dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared ones
            return {TENSOR_KEY: path}
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(f"state key {key!r} at {path or '/'} is not a string")
                if key == TENSOR_KEY:
                    raise TypeError(f"state key {TENSOR_KEY!r} at {path or '/'} is reserved")
                out[key] = walk(item, f"{path}/{key}" if path else key)
            return out
        if isinstance(value, (list, tuple)):
            return [walk(item, f"{path}/{i}") for i, item in enumerate(value)]
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
            return walk(value.item(), path)
        raise TypeError(f"state value at {path or '/'} is a {type(value).__name__}: only tensors, numbers, strings, "
                        "lists and dicts can be saved without pickling")

    return walk(state, prefix), tensors


def join_state(tree: Any, tensors: Mapping[str, Tensor], *, source: str = "state") -> Any:
    """The inverse of :func:`split_state`; a reference to a missing tensor names ``source``."""
    if isinstance(tree, dict):
        if set(tree) == {TENSOR_KEY}:
            key = tree[TENSOR_KEY]
            if key not in tensors:
                raise ModelDirError(f"{source} refers to tensor {key!r}, which its .safetensors file does not hold")
            return tensors[key]
        if set(tree) == {"__float__"}:
            return float(tree["__float__"])
        return {k: join_state(v, tensors, source=source) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_state(v, tensors, source=source) for v in tree]
    return tree


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """``tensors`` as a safetensors file, atomically, readable as the umask allows (the safetensors
    writer creates owner-only files, which another account on the deploying machine could not read)."""
    import os

    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_state(state: Any, json_path: Path, tensor_path: Path, *, meta: dict[str, Any] | None = None) -> None:
    """Write ``state`` as ``json_path`` (the tree, with ``meta``) and ``tensor_path`` (safetensors)."""
    tree, tensors = split_state(state)
    save_tensors(tensors, tensor_path)
    payload = {**(meta or {}), "state": tree}
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


def load_state(json_path: Path, tensor_path: Path, *, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(state, meta)`` written by :func:`save_state`; a missing or damaged file raises ModelDirError."""
    from safetensors.torch import load_file

    for path in (json_path, tensor_path):
        if not path.is_file():
            raise ModelDirError(f"missing file {path}")
    try:
        payload = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{json_path} is not valid JSON ({exc})") from None
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise ModelDirError(f"{tensor_path} is not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "state" not in payload:
        raise ModelDirError(f"{json_path} holds no 'state'")
    meta = {k: v for k, v in payload.items() if k != "state"}
    return join_state(payload["state"], tensors, source=str(json_path)), meta
