"""The drawing of the synthetic categories (:mod:`fader_kit.data.synthetic`): the four normal
scenes (two textures, two objects) and the five defect kinds, as pure numpy functions of a random
generator and a pixel grid.  Sizes are in pixels at :data:`BASE_SIZE` and scale with the image."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BASE_SIZE = 128  # sizes below are in pixels at this resolution and scale with the image


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


__all__ = ["BASE_SIZE", "DEFECTS", "RENDERERS", "Grid", "Scene"]
