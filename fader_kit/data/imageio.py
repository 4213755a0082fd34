"""Reading untidy image and mask files into fixed-size uint8 arrays.

Real data sets mix modes and sizes: MVTec's grid, screw and zipper are grayscale, some files
carry alpha or a palette, VisA's photos are large non-square JPEGs and its masks store defect ids
instead of 0/255.  Everything is normalised here, once, with PIL and numpy; tensors are made by
the caller from the stacked arrays (one ``torch.from_numpy`` per split).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from fader_kit.data.split import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: The most pixels (width x height, read from the header before decoding) an image may have: 40 megapixels,
#: above any industrial camera frame this library is used with, and under half of PIL's own limits, which
#: stays as it is for other code in the process (decoding runs on up to 8 threads: 8 x 40 MP x 3 bytes ~ 1 GB).
MAX_PIXELS = 40_000_000

T = TypeVar("T")
R = TypeVar("R")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files and non-images are skipped.

    Skipping (rather than failing on) ``.DS_Store``, ``Thumbs.db`` or a stray ``README`` keeps
    copied data sets usable; a file with an image extension that cannot be decoded still fails.
    """
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _open(path: Path, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``path`` opened (its header read, no pixel decoded); an image of more than ``max_pixels``
    is refused here, before its pixels could fill the memory (PIL's global limit is left alone)."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except Exception as exc:  # PIL raises several types for undecodable files
        raise DataError(f"{what} {path} cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(f"{what} {path} is {width}x{height} = {width * height} pixels, more than the {max_pixels} "
                        "this library decodes (a decompression bomb, or a frame to crop or shrink first)")
    return img


def _decode(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except Exception as exc:  # truncated or corrupt data only shows when the pixels are decoded
        raise DataError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def _to_rgb_or_l(img: Image.Image, source: object = "image") -> Image.Image:
    """Reduce any PIL mode to 8-bit ``RGB`` or ``L`` (grayscale is expanded to RGB after resizing).

    Wide grayscale is scaled by its type's range, never clipped (PIL's own conversion would clip):
    16-bit (``I;16*``) and 32-bit integer (``I``, as 16-bit PNGs open in some PIL versions) by
    255/65535; float (``F``) by 255 when every value lies in [0, 1], as is when in [0, 255].  Values
    outside those ranges have no agreed meaning and are refused with a DataError naming ``source``.
    Alpha is dropped (the stored colour is kept), palettes are expanded.
    """
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if mode == "F" and 0.0 <= low and high <= 1.0:
            scale = 255.0
        elif mode == "F" and 0.0 <= low and high <= 255.0:
            scale = 1.0
        elif mode != "F" and 0.0 <= low and high <= 65535.0:
            scale = 255.0 / 65535.0
        else:
            expected = "[0, 1] or [0, 255]" if mode == "F" else "0..65535"
            raise DataError(f"image {source}: mode {mode} values range from {low:g} to {high:g}, outside the range "
                            f"{expected} this library can scale to 8 bits; convert it to 8 or 16 bits first")
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    return img.convert("RGB")  # RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...


def upright(img: Image.Image) -> Image.Image:
    """``img`` as it is meant to be shown: its EXIF orientation applied (a camera held on its side
    stores the pixels sideways), so training and prediction see a part the same way up."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def read_image(path: Path, size: int, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` to a ``[size, size, 3]`` uint8 RGB array; also return the original (w, h),
    as shown (after its EXIF orientation).

    Resizing is bilinear with PIL's antialiasing (its filter support widens when shrinking), the
    same for every image so that train and test see identical preprocessing.  JPEGs are decoded at
    a reduced DCT scale when that is still at least ``size`` (``Image.draft``): several times
    faster on VisA's large photos, with no visible difference after the final resize.  An image of
    more than ``max_pixels`` is refused from its header, before decoding (:data:`MAX_PIXELS`).
    """
    img = _open(path, "image", max_pixels)
    if img.format == "JPEG":
        img.draft("RGB", (size, size))
    _decode(img, path, "image")
    img = upright(img)
    original = img.size
    img = _to_rgb_or_l(img, path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr, original


def mask_values(img: Image.Image) -> np.ndarray:
    """A 2-D array of a mask's stored values, whatever its mode.

    Single-channel masks keep their raw values (0/255, 0/1, defect ids, 16-bit).  Colour and
    palette masks use the brightest colour channel, so a red or white annotation counts alike and
    a palette mask reads as the colours it displays (as OpenCV's reader, used by most converters,
    would see it); alpha is ignored.
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8) * 255
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(img)
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0))
    rgb = img.convert("RGB")
    return np.asarray(rgb).max(axis=2)


def read_mask(
    path: Path,
    size: int,
    *,
    threshold: int,
    image_path: Path,
    image_size: tuple[int, int],
) -> np.ndarray:
    """Decode a ground-truth mask to a ``[size, size]`` bool array: True where value > threshold.

    The mask must have the same pixel size as its image *before* resizing: a mismatch means the
    wrong mask or a damaged file, and resizing it would silently misplace the defect.  Binarising
    happens before the nearest-neighbour resize so that no interpolated grey value is thresholded.
    """
    img = _open(path, "mask")
    _decode(img, path, "mask")
    img = upright(img)  # as its image: both as shown
    if img.size != image_size:
        raise DataError(
            f"mask {path} is {img.size[0]}x{img.size[1]} px but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]} px"
        )
    binary = mask_values(img) > threshold
    if binary.shape != (size, size):
        small = Image.fromarray(binary.astype(np.uint8) * 255).resize(
            (size, size), Image.Resampling.NEAREST
        )
        binary = np.asarray(small) > 0
    return binary


def default_workers() -> int:
    """Threads for decoding: PIL releases the GIL while decoding and resizing."""
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    progress: bool = False,
    desc: str = "",
    workers: int | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` in order, on a thread pool, with an optional tqdm bar.

    The first exception (a :class:`DataError` naming a file) is raised as is, and pending work
    is cancelled.
    """
    workers = default_workers() if workers is None else workers
    results: Iterable[R]
    if workers <= 1 or len(items) < 8:
        results = map(fn, items)
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(fn, items)
    try:
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(items), desc=desc, unit="img", leave=False)
        return list(results)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
