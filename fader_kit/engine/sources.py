"""Where a grid's binary masks M_B come from: a masker, or the test ground truth at a controlled
coverage (the oracle ``gt@C`` of the coverage study).

A source is a small picklable value (it travels to Ray workers) with a ``name`` that appears in
result rows and a ``key_payload`` that enters the masks key.  :func:`mask_source` turns a name
from the command line into a source.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from fader_kit.errors import ConfigError

GT_PREFIX = "gt@"


@dataclass(frozen=True)
class MaskerSource:
    """A registered masker with its options (fitted on the normal training images).  ``label`` names
    its rows when one grid runs the same masker with other options (``ami_net:centres=kmeans``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    label: str = ""

    @property
    def is_masker(self) -> bool:
        return True

    @property
    def row_name(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class OracleSource:
    """The test images' ground truth degraded to ``coverage`` of each defect; empty training masks
    (ground truth exists only for test images, so FADeR trains on random blobs alone)."""

    name: str
    coverage: float

    @property
    def is_masker(self) -> bool:
        return False

    @property
    def options(self) -> dict[str, Any]:
        return {"coverage": self.coverage}

    @property
    def row_name(self) -> str:
        return self.name


MaskSource = MaskerSource | OracleSource


def gt_masker_name(percent: int) -> str:
    return f"{GT_PREFIX}{percent}"


def parse_gt_masker(name: str) -> float | None:
    """``gt@25`` -> 0.25; None for an ordinary masker name."""
    m = re.fullmatch(r"gt@(\d{1,3})", name)
    if m is None:
        return None
    pct = int(m.group(1))
    if pct > 100:
        raise ConfigError(f"masker {name!r}: coverage must be 0..100 %")
    return pct / 100


def mask_source(name: str, options: dict[str, Any] | None = None, label: str = "") -> MaskSource:
    """``gt@C`` -> an oracle source; any other name -> a masker with ``options``."""
    c = parse_gt_masker(name)
    return OracleSource(name, c) if c is not None else MaskerSource(name, dict(options or {}), label)


def parse_spec(spec: str) -> MaskerSource:
    """``NAME[:KEY=VALUE]...`` (``ami_net:centres=kmeans:k_sigma=1.5``) -> a masker labelled by the spec;
    values are read as JSON when they parse."""
    from fader_kit.util.options import parse_options

    name, *items = spec.split(":")
    if not name:
        raise ConfigError(f"masker spec {spec!r} has no masker name")
    for item in items:
        if not item.partition("=")[2]:
            raise ConfigError(f"masker spec {spec!r}: expected NAME[:KEY=VALUE]..., got {item!r}")
    return MaskerSource(name, parse_options(items, f"masker spec {spec!r}"), label=spec if items else "")


def degrade_masks(gt_masks: Tensor, coverage: float, seed: int) -> Tensor:
    """Keep ~``coverage`` of the area of every defect (8-connected component) of ``gt_masks``
    ``[N, 1, H, W]``: per component, pixels are ordered along a random direction, perturbed by a
    smooth random field (a ragged edge, not a straight cut), and the first ``round(c * area)`` kept.
    Seeded: the same (masks, coverage, seed) give the same masks."""
    if not 0.0 <= coverage <= 1.0:
        raise ConfigError(f"coverage must be in [0, 1], got {coverage}")
    gt = gt_masks.bool().cpu().numpy()
    out = np.zeros_like(gt)
    rng = np.random.default_rng(seed)
    for i in range(gt.shape[0]):
        labels, n = ndimage.label(gt[i, 0], structure=np.ones((3, 3), dtype=bool))
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            keep = int(round(coverage * ys.size))
            if keep == 0:
                continue
            angle = rng.uniform(0, 2 * np.pi)
            along = ys * np.sin(angle) + xs * np.cos(angle)
            scale = max(float(along.max() - along.min()), 1.0)
            noise = ndimage.gaussian_filter(rng.standard_normal(gt.shape[-2:]), sigma=3.0)
            noise /= noise.std() + 1e-12
            order = np.argsort(along / scale + 0.15 * noise[ys, xs], kind="stable")[:keep]
            out[i, 0, ys[order], xs[order]] = True
    return torch.from_numpy(out)
