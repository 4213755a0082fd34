"""Which files a deployment command reads, and how one image becomes a model input.

Every image goes through :func:`fader_kit.data.imageio.read_image` -- the conversion the data
loaders use for training (any mode to RGB, 16-bit scaled, alpha dropped, bilinear resize to the
model's side) -- so a part photographed on the line is seen exactly as the training images were.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fader_kit.data.imageio import IMAGE_EXTENSIONS, MAX_PIXELS, _to_rgb_or_l, read_image, upright
from fader_kit.errors import ConfigError, MissingFileError


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden files and folders skipped), sorted."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def normal_images(folder: str | Path, argument: str = "--normal") -> list[Path]:
    """The images of a normal-image folder, or a UserError naming it (missing, or no images)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"argument {argument} {folder}: no such folder")
    found = images_under(folder)
    if not found:
        raise ConfigError(f"argument {argument} {folder}: the folder holds no images "
                          f"({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively)")
    return found


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files, folders (recursive) and glob patterns, in the given order, each file once.

    A named file is kept whatever its extension (reading it will tell whether it is an image); a
    path that does not exist and a pattern or folder with no image are errors, before any work."""
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = images_under(path)
            if not found:
                raise ConfigError(f"input folder {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise ConfigError(f"input pattern {item!r} matches no file")
        else:
            raise MissingFileError(f"input {item}: no such file or folder")
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def load_array(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``[size, size, 3]`` uint8 RGB and the original (width, height); a DataError names the file."""
    return read_image(Path(path), size)


def pil_array(image: Image.Image, size: int) -> np.ndarray:
    """A PIL image converted exactly as :func:`read_image` converts a decoded file (EXIF orientation,
    modes, pixel limit)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ConfigError(f"a PIL image of {width}x{height} pixels is more than the {MAX_PIXELS} this library "
                          "decodes: crop or shrink it first")
    image = _to_rgb_or_l(upright(image), "given as a PIL image")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def to_tensor(arrays: list[np.ndarray]) -> Tensor:
    """``[N, S, S, 3]`` uint8 arrays -> ``[N, 3, S, S]`` float32 in [0, 1] (as the data loaders)."""
    batch = torch.from_numpy(np.stack(arrays))
    return batch.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
