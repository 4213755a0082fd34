"""The overlay PNGs of ``fader-kit predict``: the normalised anomaly map blended over the image, the
pixel mask's border in white, under a name unique to the image's path."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

_LUT: np.ndarray | None = None


def heat_lut() -> np.ndarray:
    """``[256, 3]`` uint8 colours of matplotlib's ``jet`` map (looked up once)."""
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _LUT


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray, alpha: float = 0.45, scale: int = 1) -> np.ndarray:
    """``image`` [S, S, 3] uint8 with ``heat`` (normalised map in [0, 1], 0.5 = pixel threshold)
    blended over it and the border of ``mask`` drawn in white; upscaled ``scale`` times."""
    colours = heat_lut()[np.clip((heat * 255).round(), 0, 255).astype(np.uint8)]
    out = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
        mask = mask.repeat(scale, 0).repeat(scale, 1)
    if mask.any():
        padded = np.pad(mask, 1, constant_values=False)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        out[mask & ~inner] = 255
    return out


def overlay_name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{path.parent.name}_{path.stem}")[:80]
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}.png"
