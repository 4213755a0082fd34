"""A broad, varied stream of procedurally generated images: the offline stand-in for ImageNet.

DSR's VQ model is a *general* appearance model: its codebooks must represent normal and anomalous
appearance alike, so that the object-specific stage has something to contrast.  The official
model was pretrained on ImageNet, which cannot be had offline.  This module draws images that are
cheap to generate, deterministic under a seed and varied in the ways that matter for a codebook
of local appearance (colour, contrast, frequency, orientation, edges, flat regions, specular
gradients):

- ``fractal``: multi-octave value noise through a random colour ramp (stone, stains, clouds);
- ``grating``: oriented sine / square / sawtooth gratings with noise (weaves, threads, stripes);
- ``brushed``: noise stretched along a random direction plus a smooth light gradient (metal);
- ``shapes``: 2-12 random ellipses, rectangles and lines over a noise or gradient background
  (objects, edges, occlusions, scratches);
- ``cells``: distance to random seed points (pores, cells, grains, bubbles);
- ``checker``: rotated checkerboards and grids (printed patterns, meshes).

Every image then gets a random gamma, contrast and pixel noise.  No file and no dependency is
needed, so the same stream exists on every machine, and its version is part of the cache key of
whatever is trained on it (:data:`GENERATOR_VERSION`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

GENERATOR_VERSION = 1
KINDS = ("fractal", "grating", "brushed", "shapes", "cells", "checker")

Grid = tuple[Tensor, Tensor]  # y, x coordinates in [0, 1), each [S, S]


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(*(shape or (1,)), generator=g)


def _f(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return float(_u(g, lo, hi))


def _grid(size: int) -> Grid:
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    return y, x


def _rotated(grid: Grid, angle: float) -> tuple[Tensor, Tensor]:
    y, x = grid
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def value_noise(size: int, cells: int, g: torch.Generator, channels: int = 1) -> Tensor:
    """Smooth noise ``[C, S, S]`` in about [0, 1]: a ``cells x cells`` random lattice, bicubic upsampled."""
    lattice = torch.rand(1, channels, cells + 1, cells + 1, generator=g)
    return F.interpolate(lattice, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)


def fractal_noise(size: int, g: torch.Generator, channels: int = 1, octaves: int = 5) -> Tensor:
    """Sum of value-noise octaves (halving amplitude, doubling frequency), rescaled to [0, 1]."""
    base = int(torch.randint(1, 5, (1,), generator=g))
    out = torch.zeros(channels, size, size)
    for o in range(octaves):
        cells = min(base * 2**o, size)
        out += 0.5**o * value_noise(size, cells, g, channels)
    lo, hi = out.amin((1, 2), keepdim=True), out.amax((1, 2), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-6)


def _palette(g: torch.Generator, n: int) -> Tensor:
    """``n`` random colours ``[n, 3]``; half the time desaturated (grey metals, stone, paper)."""
    colours = torch.rand(n, 3, generator=g)
    if _f(g) < 0.5:
        grey = colours.mean(1, keepdim=True)
        colours = grey + _f(g, 0.0, 0.4) * (colours - grey)
    return colours


def colour_ramp(t: Tensor, g: torch.Generator) -> Tensor:
    """Map ``t`` ``[S, S]`` in [0, 1] through a piecewise-linear ramp of 2-4 random colours -> ``[3, S, S]``."""
    n = int(torch.randint(2, 5, (1,), generator=g))
    colours = _palette(g, n)
    pos = t.clamp(0, 1) * (n - 1)
    i = pos.floor().long().clamp(max=n - 2)
    w = (pos - i).unsqueeze(0)
    return (1 - w) * colours[i].permute(2, 0, 1) + w * colours[i + 1].permute(2, 0, 1)


def render_fractal(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    return colour_ramp(fractal_noise(size, g)[0], g)


def render_grating(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    u, _ = _rotated(grid, _f(g, 0, math.pi))
    freq = _f(g, 2.0, size / 4)
    phase = 2 * math.pi * (u * freq + _f(g))
    wave = torch.sin(phase)
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 1:
        wave = torch.sign(wave) * wave.abs() ** 0.2  # near-square
    elif kind == 2:
        wave = 2 * torch.frac(phase / (2 * math.pi)) - 1  # sawtooth
    t = 0.5 + 0.5 * wave
    t = (1 - (w := _f(g, 0, 0.5))) * t + w * fractal_noise(size, g)[0]
    return colour_ramp(t, g)


def render_brushed(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    stretch = int(torch.randint(8, 33, (1,), generator=g))
    streaks = F.interpolate(torch.rand(1, 1, size, max(2, size // stretch), generator=g), size=(size, size),
                            mode="bilinear", align_corners=False)[0, 0]
    angle = _f(g, 0, math.pi)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    streaks = F.grid_sample(streaks[None, None], F.affine_grid(theta[None], [1, 1, size, size], align_corners=False),
                            padding_mode="reflection", align_corners=False)[0, 0]
    u, _ = _rotated(grid, _f(g, 0, 2 * math.pi))
    light = 0.5 + 0.5 * torch.cos(2 * math.pi * (u * _f(g, 0.3, 1.5) + _f(g)))
    t = _f(g, 0.2, 0.6) * streaks + (1 - _f(g, 0.2, 0.6)) * light
    return colour_ramp(t.clamp(0, 1), g)


def _shape_mask(g: torch.Generator, grid: Grid) -> Tensor:
    y, x = grid
    cy, cx = _f(g), _f(g)
    u, v = _rotated((y - cy, x - cx), _f(g, 0, math.pi))
    a, b = _f(g, 0.03, 0.35), _f(g, 0.03, 0.35)
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:
        return ((u / a) ** 2 + (v / b) ** 2 <= 1).float()
    if kind == 1:
        return ((u.abs() <= a) & (v.abs() <= b)).float()
    return ((v.abs() <= _f(g, 0.003, 0.02)) & (u.abs() <= a * 2)).float()  # a line / scratch


def render_shapes(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    if _f(g) < 0.5:
        image = colour_ramp(fractal_noise(size, g)[0], g)
    else:
        u, _ = _rotated(grid, _f(g, 0, 2 * math.pi))
        image = colour_ramp((u - u.min()) / (u.max() - u.min()), g)
    for _ in range(int(torch.randint(2, 13, (1,), generator=g))):
        m = _shape_mask(g, grid)
        fill = _palette(g, 1)[0].view(3, 1, 1) * (0.7 + 0.3 * fractal_noise(size, g))
        image = image * (1 - m) + fill * m
    return image


def render_cells(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    y, x = grid
    n = int(torch.randint(4, 80, (1,), generator=g))
    pts = torch.rand(n, 2, generator=g)
    d = ((y[None] - pts[:, 0, None, None]) ** 2 + (x[None] - pts[:, 1, None, None]) ** 2).sqrt()
    near = d.topk(2, dim=0, largest=False).values
    t = near[0] / near[0].max() if _f(g) < 0.5 else (near[1] - near[0]) / (near[1] - near[0]).max()
    return colour_ramp(t, g)


def render_checker(size: int, g: torch.Generator, grid: Grid) -> Tensor:
    u, v = _rotated(grid, _f(g, 0, math.pi / 2))
    n = _f(g, 2, 24)
    if _f(g) < 0.5:
        t = ((torch.floor(u * n) + torch.floor(v * n)) % 2).float()
    else:
        width = _f(g, 0.05, 0.3)
        t = ((torch.frac(u * n) < width) | (torch.frac(v * n) < width)).float()
    return colour_ramp(t, g)


RENDERERS: dict[str, Callable[[int, torch.Generator, Grid], Tensor]] = {
    "fractal": render_fractal, "grating": render_grating, "brushed": render_brushed,
    "shapes": render_shapes, "cells": render_cells, "checker": render_checker,
}


def _finish(image: Tensor, g: torch.Generator) -> Tensor:
    """Random gamma, contrast around the mean, and pixel noise; clamped to [0, 1]."""
    image = image.clamp(0, 1) ** _f(g, 0.6, 1.6)
    mean = image.mean()
    image = mean + _f(g, 0.5, 1.3) * (image - mean)
    image = image + _f(g, 0.0, 0.05) * torch.randn(image.shape, generator=g)
    return image.clamp(0, 1)


def general_images(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``n`` procedurally generated RGB images ``[n, 3, size, size]`` in [0, 1], kinds drawn uniformly."""
    if n < 1 or size < 8:
        raise ValueError(f"general_images needs n >= 1 and size >= 8, got n={n}, size={size}")
    grid = _grid(size)
    kinds = torch.randint(0, len(KINDS), (n,), generator=generator).tolist()
    return torch.stack([_finish(RENDERERS[KINDS[k]](size, generator, grid), generator) for k in kinds])
