"""Checks of a detector folder's tensor files against what its JSON files say, before any tensor
is used: the model's tensors against the modules the settings describe, and a state file's tensor
references against its ``.safetensors`` file (see :mod:`fader_kit.deploy.modeldir`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from fader_kit.errors import ModelDirError


def check_model_tensors(header: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, Tensor], path: Path) -> None:
    """The tensors of ``model.safetensors`` (its header) against the modules' (``expected``)."""
    from fader_kit.deploy.modeldir import safetensors_dtype, shown

    for name, tensor in expected.items():
        if name not in header:
            raise ModelDirError(f"{path} lacks tensor {shown(name)} of the model that detector.json describes")
        want = (safetensors_dtype(tensor.dtype), tuple(tensor.shape))
        if header[name] != want:
            raise ModelDirError(f"{path}: tensor {shown(name)} is {header[name][0]} {list(header[name][1])}, the model "
                                f"detector.json describes has {want[0]} {list(want[1])}")
    extra = sorted(set(header) - set(expected))
    if extra:
        raise ModelDirError(f"{path} holds tensor {shown(extra[0])}, which the model detector.json describes has not")


def check_tensor_refs(tree: Any, header: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> None:
    """Every tensor reference of a state tree names a tensor of the file and every tensor is
    referenced once; ``__float__`` leaves hold numbers."""
    from fader_kit.deploy.modeldir import shown
    from fader_kit.deploy.statefiles import TENSOR_KEY

    seen: set[str] = set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if TENSOR_KEY in node:
                key = node[TENSOR_KEY]
                if len(node) != 1 or not isinstance(key, str) or key not in header or key in seen:
                    raise ModelDirError(f"{path}: entry {where or '/'} refers to tensor {shown(key)}, which its "
                                        ".safetensors file does not hold (or another entry already uses)")
                seen.add(key)
                return
            if "__float__" in node:
                value = node["__float__"]
                if len(node) != 1 or value not in ("inf", "-inf", "nan"):
                    raise ModelDirError(f"{path}: entry {where or '/'} is not a number ({shown(value)})")
                return
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(tree, "")
    unused = sorted(set(header) - seen)
    if unused:
        raise ModelDirError(f"{path} does not refer to tensor {shown(unused[0])} of its .safetensors file")
