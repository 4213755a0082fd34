"""A deterministic generator of MVTec-layout categories: the offline default data.

Two textures and two objects, each with five defect kinds and pixel masks, written as PNG files
in the MVTec layout so that exactly the same loader reads them as reads MVTec AD:

- ``weave`` (texture): a plain-weave fabric of oriented threads; pose varies by a small rotation
  and a random phase (shift) of the thread grid.
- ``cells`` (texture): stone-like Voronoi cells with dark joints and fine grain; every image draws
  new cells, so normal images differ in structure, not only in noise.
- ``washer`` (object): a shaded metal ring with a notch on a dark background; centre and notch
  angle jitter.
- ``plate`` (object): a brushed rectangular part with rounded corners and two bolt holes on a
  light background; position and angle jitter.

Defect kinds (:data:`DEFECT_KINDS`): ``scratch`` (a straight bright or dark line), ``stain`` (a
soft tinted spot), ``hole`` (a missing chunk showing the background, or the backing of a
texture), ``crack`` (a dark jagged polyline), ``contamination`` (a cluster of foreign-coloured
specks).  Every image, normal or not, gets a random brightness gain, a lighting gradient and
pixel noise, applied *after* the defect so that a defect cannot be found by its lack of noise.

Determinism: each image has its own generator, ``np.random.default_rng(SeedSequence(seed,
spawn_key=(category, split, kind, index)))``, so an image depends only on the seed and its own
identity -- not on the order of generation or on how many other images were asked for.  No global
random state is touched.  All drawing is vectorised numpy over the pixel grid.

:func:`ensure_synthetic` generates into a cache folder keyed by generator version, seed and
configuration, writing into a temporary folder that is renamed into place only when complete, so
an interrupted run never leaves a folder that looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .split import DataError

SYNTHETIC_VERSION = 1
SYNTHETIC_TEXTURES: tuple[str, ...] = ("weave", "cells")
SYNTHETIC_OBJECTS: tuple[str, ...] = ("washer", "plate")
SYNTHETIC_CATEGORIES: tuple[str, ...] = SYNTHETIC_TEXTURES + SYNTHETIC_OBJECTS
DEFECT_KINDS: tuple[str, ...] = ("scratch", "stain", "hole", "crack", "contamination")
BASE_SIZE = 128  # sizes below are in pixels at this resolution and scale with the image
CACHE_ENV = "FADER_KIT_CACHE"

_SPLIT_IDS = {"train": 0, "test": 1}


class SyntheticConfig(BaseModel):
    """How much to generate, and at which resolution.

    ``image_size=None`` generates at 128 px, or at the requested loading size when that is larger
    (so a 256 px profile does not train on upsampled 128 px images).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int | None = Field(None, ge=32, le=2048)
    n_train: int = Field(60, ge=1)
    n_test_good: int = Field(100, ge=0)
    n_per_defect: int = Field(20, ge=0)
    defect_kinds: tuple[str, ...] = DEFECT_KINDS

    @field_validator("defect_kinds")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in DEFECT_KINDS]
        if unknown or len(set(v)) != len(v):
            raise ValueError(f"defect_kinds must be distinct names from {DEFECT_KINDS}, got {v}")
        return v

    def resolved_size(self, requested: int | None = None) -> int:
        if self.image_size is not None:
            return self.image_size
        return max(BASE_SIZE, requested or 0)

    def key(self, seed: int, size: int) -> str:
        """Cache folder name: changes whenever anything that shapes the files changes."""
        kinds = "all" if self.defect_kinds == DEFECT_KINDS else "-".join(self.defect_kinds)
        return (
            f"v{SYNTHETIC_VERSION}-seed{seed}-{size}px-train{self.n_train}-good{self.n_test_good}"
            f"-def{self.n_per_defect}-{kinds}"
        )


# --------------------------------------------------------------------------------------------
# Scenes: a clean normal image plus what defects need to know about it.


@dataclass
class Scene:
    """A rendered normal image and the context a defect needs.

    ``support`` is 1 on the material a defect can damage (the object; everywhere for textures);
    ``interior`` are the pixels where a defect may be centred; ``backdrop`` is what a hole reveals.
    """

    image: np.ndarray  # [S, S, 3] float32
    support: np.ndarray  # [S, S] float32 in [0, 1]
    interior: np.ndarray  # [S, S] bool
    backdrop: np.ndarray  # [S, S, 3] float32


@dataclass
class Grid:
    """Pixel-centre coordinates and the scale factor k = size / 128."""

    x: np.ndarray
    y: np.ndarray
    size: int

    @property
    def k(self) -> float:
        return self.size / BASE_SIZE

    @classmethod
    def of(cls, size: int) -> Grid:
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
        return cls(x=x, y=y, size=size)


def _rgb(*c: float) -> np.ndarray:
    return np.asarray(c, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, passes: int = 2) -> np.ndarray:
    """Unit-ish noise with a few pixels of correlation (repeated 3x3 box blur), zero mean."""
    n = rng.standard_normal((size, size), dtype=np.float32)
    for _ in range(passes):
        p = np.pad(n, 1, mode="reflect")
        n = (
            p[:-2, :-2] + p[:-2, 1:-1] + p[:-2, 2:] + p[1:-1, :-2] + p[1:-1, 1:-1] + p[1:-1, 2:]
            + p[2:, :-2] + p[2:, 1:-1] + p[2:, 2:]
        ) / 9.0
    return n / (n.std() + 1e-8)


def _border_interior(g: Grid, margin: float) -> np.ndarray:
    return (g.x > margin) & (g.x < g.size - margin) & (g.y > margin) & (g.y < g.size - margin)


def render_weave(rng: np.random.Generator, g: Grid) -> Scene:
    """Plain weave: warp and weft threads alternate on top cell by cell, at a slightly jittered angle."""
    k = g.k
    theta = np.deg2rad(20.0 + rng.normal(0.0, 3.0))
    period = 9.0 * k * (1.0 + rng.normal(0.0, 0.01))
    phase = rng.uniform(0.0, period, 2)
    c, s = np.cos(theta), np.sin(theta)
    u = (g.x * c + g.y * s + phase[0]) / period
    v = (-g.x * s + g.y * c + phase[1]) / period
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2) == 0
    across_u, across_v = np.sin(np.pi * fu), np.sin(np.pi * fv)
    profile = np.where(warp_on_top, across_u * (0.8 + 0.2 * across_v), across_v * (0.8 + 0.2 * across_u))
    shade = (0.35 + 0.6 * profile + 0.03 * _smooth_noise(rng, g.size, 1)).astype(np.float32)
    colour = np.where(warp_on_top[..., None], _rgb(0.80, 0.64, 0.44), _rgb(0.70, 0.57, 0.42))
    image = shade[..., None] * colour
    # the backing seen through a hole: flat, a little darker than the fabric's mean colour
    backdrop = np.broadcast_to(_rgb(0.42, 0.34, 0.24), image.shape).astype(np.float32)
    ones = np.ones((g.size, g.size), np.float32)
    return Scene(image.astype(np.float32), ones, _border_interior(g, 12 * k), backdrop)


def render_cells(rng: np.random.Generator, g: Grid) -> Scene:
    """Voronoi cells on a jittered grid (new cells per image), dark joints, per-cell tone, grain."""
    k = g.k
    n = 7
    cell = g.size / n
    iy, ix = np.mgrid[-1 : n + 1, -1 : n + 1].astype(np.float32)  # one seed per cell, a ring outside
    sy = ((iy + 0.5 + rng.uniform(-0.35, 0.35, iy.shape)) * cell).astype(np.float32)
    sx = ((ix + 0.5 + rng.uniform(-0.35, 0.35, ix.shape)) * cell).astype(np.float32)
    # with jitter < 0.5 cell the two nearest seeds lie in the pixel's own cell or its 8 neighbours:
    # 9 candidate distances per pixel instead of all (n+2)^2
    ci = np.clip((g.y / cell).astype(np.int64), 0, n - 1) + 1
    cj = np.clip((g.x / cell).astype(np.int64), 0, n - 1) + 1
    rows = np.stack([ci + dy for dy in (-1, 0, 1) for _ in (-1, 0, 1)])
    cols = np.stack([cj + dx for _ in (-1, 0, 1) for dx in (-1, 0, 1)])
    d2 = (g.y - sy[rows, cols]) ** 2 + (g.x - sx[rows, cols]) ** 2
    first = d2.argmin(axis=0)
    nearest = np.take_along_axis(rows * (n + 2) + cols, first[None], 0)[0]
    two = np.sqrt(np.partition(d2, 1, axis=0)[:2])
    joint = np.exp(-(((two[1] - two[0]) / (1.3 * k)) ** 2))
    tone = rng.normal(0.0, 0.06, sy.size).astype(np.float32)[nearest]
    grain = 0.035 * _smooth_noise(rng, g.size, 1)
    shade = (1.0 + tone + grain - 0.45 * joint).astype(np.float32)
    image = shade[..., None] * _rgb(0.62, 0.61, 0.55)
    backdrop = ((0.55 + 0.05 * grain)[..., None] * _rgb(0.62, 0.61, 0.55)).astype(np.float32)  # a chipped-out pit
    ones = np.ones((g.size, g.size), np.float32)
    return Scene(image.astype(np.float32), ones, _border_interior(g, 12 * k), backdrop)


def _jitter(rng: np.random.Generator, sigma: float, limit: float, n: int = 2) -> np.ndarray:
    return np.clip(rng.normal(0.0, sigma, n), -limit, limit)


def render_washer(rng: np.random.Generator, g: Grid) -> Scene:
    """A shaded metal ring with a notch in its rim, on a dark background; centre and notch jitter."""
    k, size = g.k, g.size
    cx, cy = size / 2 + _jitter(rng, 2.0 * k, 5 * k)
    r_out = 42.0 * k * (1.0 + rng.normal(0.0, 0.01))
    r_in = 20.0 * k
    dx, dy = g.x - cx, g.y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    alpha = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in + 0.5, 0, 1)
    notch = np.clip(rng.normal(0.0, 0.15), -0.3, 0.3) - np.pi / 2  # notch points up, +-~17 deg
    radial = dx * np.cos(notch) + dy * np.sin(notch)
    tangential = -dx * np.sin(notch) + dy * np.cos(notch)
    cut = np.clip(4.0 * k - np.abs(tangential) + 0.5, 0, 1) * np.clip(radial - (r_out - 7.0 * k) + 0.5, 0, 1)
    alpha = (alpha * (1.0 - cut)).astype(np.float32)
    ring_pos = (r - r_in) / (r_out - r_in)
    shade = 0.62 + 0.13 * np.cos(phi - 0.8) + 0.08 * np.cos(2 * np.pi * ring_pos) + 0.02 * np.sin(r * 1.7 / k)
    metal = shade[..., None] * _rgb(0.80, 0.81, 0.86)
    vignette = 1.0 - 0.15 * ((g.x - size / 2) ** 2 + (g.y - size / 2) ** 2) / (size / 2) ** 2
    background = (vignette[..., None] * _rgb(0.16, 0.17, 0.19)).astype(np.float32)
    image = background * (1 - alpha[..., None]) + metal * alpha[..., None]
    interior = (r > r_in + 4 * k) & (r < r_out - 4 * k) & (cut == 0)
    return Scene(image.astype(np.float32), alpha, interior, background)


def render_plate(rng: np.random.Generator, g: Grid) -> Scene:
    """A brushed rectangular part with rounded corners and two bolt holes, on a light background."""
    k, size = g.k, g.size
    cx, cy = size / 2 + _jitter(rng, 2.0 * k, 5 * k)
    angle = np.deg2rad(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    c, s = np.cos(angle), np.sin(angle)
    lx = (g.x - cx) * c + (g.y - cy) * s
    ly = -(g.x - cx) * s + (g.y - cy) * c
    half_w, half_h, rc = 38.0 * k, 25.0 * k, 7.0 * k
    qx, qy = np.abs(lx) - (half_w - rc), np.abs(ly) - (half_h - rc)
    sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc
    alpha = np.clip(0.5 - sdf, 0, 1)
    hole_r = 5.5 * k
    for hx in (-25.0 * k, 25.0 * k):
        alpha = alpha * np.clip(np.hypot(lx - hx, ly) - hole_r + 0.5, 0, 1)
    alpha = alpha.astype(np.float32)
    streaks = rng.standard_normal(size * 2).astype(np.float32)
    streaks = np.convolve(streaks, np.ones(3, np.float32) / 3, mode="same")
    brushed = 0.03 * streaks[np.clip((ly + size).astype(np.int64), 0, 2 * size - 1)]
    bevel = 0.28 * np.exp(np.minimum(sdf, 0) / (2.5 * k))
    shade = 1.0 + brushed - bevel + 0.06 * (lx / half_w)
    part = shade[..., None] * _rgb(0.30, 0.37, 0.48)
    gradient = 1.0 + 0.04 * (g.y / size - 0.5)
    background = (gradient[..., None] * _rgb(0.86, 0.84, 0.78)).astype(np.float32)
    image = background * (1 - alpha[..., None]) + part * alpha[..., None]
    interior = (sdf < -5 * k) & (alpha > 0.99)
    return Scene(image.astype(np.float32), alpha, interior, background)


RENDERERS: dict[str, Callable[[np.random.Generator, Grid], Scene]] = {
    "weave": render_weave,
    "cells": render_cells,
    "washer": render_washer,
    "plate": render_plate,
}

# --------------------------------------------------------------------------------------------
# Defects: each returns the damaged image and the boolean ground-truth mask.


def _segment_distance(g: Grid, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment p0-p1 (points as (x, y))."""
    d = p1 - p0
    t = ((g.x - p0[0]) * d[0] + (g.y - p0[1]) * d[1]) / max(float(d @ d), 1e-8)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(g.x - (p0[0] + t * d[0]), g.y - (p0[1] + t * d[1]))


def _blob(rng: np.random.Generator, g: Grid, centre: np.ndarray, radius: float) -> np.ndarray:
    """Soft irregular blob: a radius modulated by a few random angular harmonics, antialiased."""
    dx, dy = g.x - centre[0], g.y - centre[1]
    phi = np.arctan2(dy, dx)
    r = np.full_like(phi, radius)
    for h in (2, 3, 5):
        r = r + radius * rng.uniform(0.0, 0.15) * np.cos(h * phi + rng.uniform(0, 2 * np.pi))
    return np.clip(r - np.hypot(dx, dy) + 0.5, 0, 1).astype(np.float32)


def _centre(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    ys, xs = np.nonzero(scene.interior)
    i = rng.integers(len(ys))
    return np.array([xs[i] + 0.5, ys[i] + 0.5], dtype=np.float32)


def defect_scratch(rng: np.random.Generator, g: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    k = g.k
    centre = _centre(rng, scene)
    angle = rng.uniform(0, np.pi)
    half_len = rng.uniform(11, 22) * k
    direction = np.array([np.cos(angle), np.sin(angle)], np.float32) * half_len
    dist = _segment_distance(g, centre - direction, centre + direction)
    width = rng.uniform(1.2, 1.8) * k
    core = np.clip(width - dist + 0.5, 0, 1) * scene.support
    sign = 1.0 if rng.random() < 0.6 else -1.0
    image = scene.image + (sign * rng.uniform(0.12, 0.3) * core)[..., None]
    return image, (dist < width) & (scene.support > 0.5)


def defect_stain(rng: np.random.Generator, g: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    k = g.k
    blob = _blob(rng, g, _centre(rng, scene), rng.uniform(5, 9) * k)
    # soften the edge: a stain fades out rather than ending on a hard line
    neighbours = np.roll(blob, 1, 0) + np.roll(blob, -1, 0) + np.roll(blob, 1, 1) + np.roll(blob, -1, 1)
    soft = np.clip((blob + neighbours) / 5, 0, 1)
    soft = soft * scene.support
    colours = (_rgb(0.42, 0.27, 0.10), _rgb(0.12, 0.12, 0.14), _rgb(0.55, 0.20, 0.18))
    colour = colours[rng.integers(len(colours))]
    strength = rng.uniform(0.3, 0.55)
    a = (strength * soft)[..., None]
    image = scene.image * (1 - a) + colour * a
    return image, (soft > 0.5)


def defect_hole(rng: np.random.Generator, g: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    k = g.k
    blob = _blob(rng, g, _centre(rng, scene), rng.uniform(5, 8.5) * k) * scene.support
    a = blob[..., None]
    image = scene.image * (1 - a) + scene.backdrop * a
    return image, (blob > 0.5)


def defect_crack(rng: np.random.Generator, g: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    k = g.k
    n = int(rng.integers(8, 13))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.45, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], 1) * (rng.uniform(3, 5, n)[:, None] * k)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)], 0)
    points = (points - points.mean(0) + _centre(rng, scene)).astype(np.float32)
    dist = np.min([_segment_distance(g, points[i], points[i + 1]) for i in range(n)], axis=0)
    width = rng.uniform(1.0, 1.4) * k
    core = np.clip(width - dist + 0.5, 0, 1) * scene.support
    image = scene.image * (1 - rng.uniform(0.3, 0.5) * core)[..., None]
    return image, (dist < width) & (scene.support > 0.5)


def defect_contamination(rng: np.random.Generator, g: Grid, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    k = g.k
    centre = _centre(rng, scene)
    cover = np.zeros((g.size, g.size), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        c = centre + rng.normal(0, 4.0 * k, 2)
        radius = rng.uniform(1.8, 3.5) * k
        cover = np.maximum(cover, np.clip(radius - np.hypot(g.x - c[0], g.y - c[1]) + 0.5, 0, 1))
    colours = (_rgb(0.88, 0.84, 0.55), _rgb(0.22, 0.46, 0.22), _rgb(0.95, 0.95, 0.95), _rgb(0.15, 0.25, 0.55))
    colour = colours[rng.integers(len(colours))]
    speckle = 1.0 + 0.08 * rng.standard_normal((g.size, g.size)).astype(np.float32)
    a = (rng.uniform(0.55, 0.9) * cover)[..., None]
    image = scene.image * (1 - a) + (colour * speckle[..., None]) * a
    return image, cover > 0.5


DEFECTS: dict[str, Callable[[np.random.Generator, Grid, Scene], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": defect_scratch,
    "stain": defect_stain,
    "hole": defect_hole,
    "crack": defect_crack,
    "contamination": defect_contamination,
}

# --------------------------------------------------------------------------------------------
# Whole images.


def _finish(rng: np.random.Generator, g: Grid, image: np.ndarray) -> np.ndarray:
    """Lighting and sensor variation shared by every image, then 8-bit quantisation."""
    gain = 1.0 + rng.normal(0.0, 0.05) + rng.normal(0.0, 0.012, 3)  # brightness and a slight tint
    slope = rng.normal(0.0, 0.06, 2)
    light = 1.0 + slope[0] * (g.x / g.size - 0.5) + slope[1] * (g.y / g.size - 0.5)
    noisy = image * light[..., None] * gain + rng.normal(0.0, 0.015, image.shape)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _image_rng(seed: int, category: str, split: str, kind: str, index: int) -> np.random.Generator:
    key = (zlib.crc32(category.encode()), _SPLIT_IDS[split], zlib.crc32(kind.encode()), index)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def render_image(
    category: str, size: int, seed: int, split: str, kind: str, index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image ``[size, size, 3]`` uint8 and, for a defect kind, its mask ``[size, size]`` bool.

    ``kind`` is ``"good"`` or one of :data:`DEFECT_KINDS`.  Pure function of its arguments.
    """
    rng = _image_rng(seed, category, split, kind, index)
    g = Grid.of(size)
    scene = RENDERERS[category](rng, g)
    if kind == "good":
        return _finish(rng, g, scene.image), None
    min_area = 10.0 * g.k**2
    for _ in range(50):  # redraw the rare defect that falls almost entirely off the material
        image, mask = DEFECTS[kind](rng, g, scene)
        if mask.sum() >= min_area:
            return _finish(rng, g, image), mask
    raise RuntimeError(f"could not place a {kind} defect on {category} (seed {seed}, index {index})")


def _plan(config: SyntheticConfig) -> list[tuple[str, str, int]]:
    """(split, kind, index) of every image of a category, in writing order."""
    plan = [("train", "good", i) for i in range(config.n_train)]
    plan += [("test", "good", i) for i in range(config.n_test_good)]
    plan += [("test", kind, i) for kind in config.defect_kinds for i in range(config.n_per_defect)]
    return plan


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def write_category(
    folder: Path, category: str, *, seed: int, config: SyntheticConfig, size: int, progress: bool = False
) -> None:
    """Write one category in the MVTec layout into ``folder`` (which must exist and be empty)."""
    plan = _plan(config)
    for split, kind in {(s, k) for s, k, _ in plan}:
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
        if kind != "good":
            (folder / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
    items: Iterable[tuple[str, str, int]] = plan
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(plan, desc=f"synthetic/{category}", unit="img", leave=False)
    for split, kind, index in items:
        image, mask = render_image(category, size, seed, split, kind, index)
        _save_png(image, folder / split / kind / f"{index:03d}.png")
        if mask is not None:
            _save_png(mask.astype(np.uint8) * 255, folder / "ground_truth" / kind / f"{index:03d}_mask.png")
    meta = {
        "generator": "fader_kit.data.synthetic",
        "version": SYNTHETIC_VERSION,
        "category": category,
        "seed": seed,
        "image_size": size,
        **config.model_dump(mode="json", exclude={"image_size"}),
    }
    (folder / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _check(category: str, seed: int) -> None:
    if category not in SYNTHETIC_CATEGORIES:
        raise DataError(
            f"unknown synthetic category {category!r}; synthetic categories: {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"argument seed={seed!r} must be a non-negative int")


def _write_atomically(
    final: Path, category: str, *, seed: int, config: SyntheticConfig, size: int, progress: bool
) -> None:
    """Generate into a hidden temporary sibling, then rename it to ``final`` in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=final.parent))
    try:
        write_category(tmp, category, seed=seed, config=config, size=size, progress=progress)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not another process finishing first: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$FADER_KIT_CACHE``, else ``~/.cache/fader_kit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fader_kit"


def ensure_synthetic(
    category: str,
    *,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    image_size: int | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = False,
) -> Path:
    """The cached folder of one synthetic category, generating it first if it is not complete."""
    config = config or SyntheticConfig()
    _check(category, seed)
    size = config.resolved_size(image_size)
    final = cache_root(cache_dir) / "synthetic" / config.key(int(seed), size) / category
    if not final.is_dir():
        _write_atomically(final, category, seed=int(seed), config=config, size=size, progress=progress)
    return final


def generate_synthetic(
    root: Path | str,
    *,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write synthetic categories into ``root/<category>`` in the MVTec layout; return the folders.

    Load them back with ``load_category("mvtec:" + str(root), category, size)``.  An existing
    category folder is an error unless ``overwrite=True``; each category appears only once fully
    written.
    """
    config = config or SyntheticConfig()
    names = list(SYNTHETIC_CATEGORIES if categories is None else categories)
    for name in names:
        _check(name, seed)
    root = Path(root).expanduser()
    size = config.resolved_size()
    written = []
    for name in names:
        final = root / name
        if final.exists():
            if not overwrite:
                raise DataError(f"{final} already exists; pass overwrite=True to replace it")
            shutil.rmtree(final)
        _write_atomically(final, name, seed=int(seed), config=config, size=size, progress=progress)
        written.append(final)
    return written
