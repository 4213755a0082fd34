"""Shared material of the deployment tests: a tiny profile and generated 'parts'."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fader_kit.model.config import FaderConfig, Profile, TrainConfig, UNetConfig

TINY = Profile(
    name="tiny", image_size=32, unet=UNetConfig(widths=(4, 8, 8, 8, 8)),
    ear=TrainConfig(epochs=1, batch_size=8, lr=2e-3), fader=TrainConfig(epochs=1, batch_size=8, lr=1e-3, ranking_pairs=64),
    fader_head=FaderConfig(patch_size=8, hidden=8), eval_batch_size=8,
)


def part(rng: np.random.Generator, size: tuple[int, int] = (40, 48), defect: bool = False) -> np.ndarray:
    """A grey 'part' with mild noise; a defect is a dark square."""
    img = np.full((*size, 3), 140, dtype=np.int64) + rng.integers(-8, 8, (*size, 3))
    if defect:
        img[8:24, 10:26] = 20
    return img.clip(0, 255).astype(np.uint8)


def write_parts(folder: Path, n: int, seed: int = 0, prefix: str = "good", size: tuple[int, int] = (40, 48)) -> list[Path]:
    """``n`` normal parts as PNG files under ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(part(rng, size)).save(path)
        paths.append(path)
    return paths
