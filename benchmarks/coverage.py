"""``fader-kit bench coverage``: the paper's thesis, measured.

FADeR claims to rescue EAR when the binary mask misses part of a defect.  This benchmark feeds
EAR and FADeR masks that cover a *controlled* fraction c of every defect: the ground truth of
the test images, degraded per defect (connected component) to c of its area by dropping the part
beyond a random sweep line with a ragged edge (:func:`degrade_masks`, seeded).  c = 100 % is an
oracle masker, c = 0 % a masker that never fires.  Each offline masker's own masks run beside
them for reference, on the same U-Net and seeds.

Ground truth exists only for test images, so the pseudo-maskers ``gt@C`` have *empty* training
masks: FADeR trains on the random blobs alone (the U-Net is blob-trained anyway, shared by every
masker).  Rows go into the same store as every table (table ``coverage``), so the usual report,
seeds and paired intervals apply; :func:`coverage_section` adds the table and the curve figure.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from fader_kit.cache import MaskSet
from fader_kit.interfaces import MaskerInfo
from fader_kit.pipeline import CategoryWorkbench

from .runner import BenchConfig, BenchRunner, Log, PlannedUnit, RunSummary
from .store import ResultRow

COVERAGES: tuple[int, ...] = (0, 25, 50, 75, 100)
GT_PREFIX = "gt@"


def gt_masker_name(percent: int) -> str:
    return f"{GT_PREFIX}{percent}"


def parse_gt_masker(name: str) -> float | None:
    """``gt@25`` -> 0.25; None for an ordinary masker name."""
    m = re.fullmatch(r"gt@(\d{1,3})", name)
    if m is None:
        return None
    pct = int(m.group(1))
    if pct > 100:
        raise ValueError(f"masker {name!r}: coverage must be 0..100 %")
    return pct / 100


def degrade_masks(gt_masks: Tensor, coverage: float, seed: int) -> Tensor:
    """Keep ~``coverage`` of the area of every defect (8-connected component) of ``gt_masks``
    ``[N, 1, H, W]``: per component, pixels are ordered along a random direction, perturbed by a
    smooth random field (a ragged edge, not a straight cut), and the first ``round(c * area)`` kept.
    Seeded: the same (masks, coverage, seed) give the same masks."""
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")
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
            field = ndimage.gaussian_filter(rng.standard_normal(gt.shape[-2:]), sigma=3.0)
            field /= field.std() + 1e-12
            order = np.argsort(along / scale + 0.15 * field[ys, xs], kind="stable")[:keep]
            out[i, 0, ys[order], xs[order]] = True
    return torch.from_numpy(out)


def defect_coverage(masks: Tensor, gt_masks: Tensor) -> list[float]:
    """Fraction of each defect (8-connected component of ``gt_masks``) covered by ``masks``."""
    gt, mb = gt_masks.bool().cpu().numpy(), masks.bool().cpu().numpy()
    fractions = []
    for i in range(gt.shape[0]):
        labels, n = ndimage.label(gt[i, 0], structure=np.ones((3, 3), dtype=bool))
        for k in range(1, n + 1):
            comp = labels == k
            fractions.append(float(mb[i, 0][comp].mean()))
    return fractions


class CoverageRunner(BenchRunner):
    """The table runner with pseudo-maskers ``gt@C`` whose test masks are degraded ground truth."""

    def maskers(self) -> list[str]:
        names = list(self.config.maskers) if self.config.maskers is not None else list(self.spec.maskers)
        real = [m for m in names if parse_gt_masker(m) is None]
        if real and self.config.maskers is not None:
            known = {e.name for e in self.registry.list()}
            unknown = [m for m in real if m not in known]
            if unknown:
                from fader_kit.registry import UnknownMaskerError

                raise UnknownMaskerError(f"argument --maskers: unknown masker(s) {', '.join(unknown)}; "
                                         f"registered maskers: {', '.join(sorted(known)) or 'none'}")
        return names

    def _get_masks(self, pu: PlannedUnit, cat: CategoryWorkbench):
        c = parse_gt_masker(pu.unit.masker)
        if c is None:
            return super()._get_masks(pu, cat)
        split = cat.split()
        test = degrade_masks(split.masks, c, seed=pu.unit.seed)
        train = torch.zeros(split.train.shape[0], 1, *split.train.shape[-2:], dtype=torch.bool)
        info = MaskerInfo(name=pu.unit.masker, weights="ground-truth", details={"coverage": c})
        return MaskSet(train=train, test=test, info=info, seconds=0.0), True


def run_coverage(config: BenchConfig, *, log: Log = print) -> RunSummary:
    """Plan and run the coverage benchmark (``config.table`` must be ``coverage``)."""
    if config.table != "coverage":
        raise ValueError(f"run_coverage runs table 'coverage', got {config.table!r}")
    return CoverageRunner(config, log=log).run()


# -- report -----------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def coverage_points(rows: list[ResultRow]) -> dict[str, dict[str, Any]]:
    """masker -> {coverage (measured mean over seeds and categories), per variant image/pixel AUROC means}."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.unit.table != "coverage" or r.status != "ok":
            continue
        d = out.setdefault(r.unit.masker, {"coverage": [], "image": {}, "pixel": {}})
        diag = (r.config or {}).get("diagnostics") or {}
        cov = (diag.get("mask") or {}).get("defect_pixels_masked")
        if cov is not None:
            d["coverage"].append(cov)
        d["image"].setdefault(r.unit.variant, []).append(r.image_auroc)
        d["pixel"].setdefault(r.unit.variant, []).append(r.pixel_auroc)
    return {m: {"coverage": _mean(d["coverage"]),
                "image": {v: _mean(x) for v, x in d["image"].items()},
                "pixel": {v: _mean(x) for v, x in d["pixel"].items()}} for m, d in out.items()}


def coverage_section(rows: list[ResultRow], folder: Path, *, figure: bool = True) -> tuple[list[str], list[Path]]:
    """Markdown lines (table: masker, measured coverage, EAR and FADeR image / pixel AUROC) and
    the curve figure ``figures/coverage/curve.png``."""
    pts = coverage_points(rows)
    if not pts:
        return [], []

    def key(m: str) -> tuple[int, float]:
        c = parse_gt_masker(m)
        return (0, c) if c is not None else (1, pts[m]["coverage"] or 0.0)

    names = sorted(pts, key=key)
    variants = sorted({v for p in pts.values() for v in p["image"]}, key=lambda v: (v != "ear", v))
    head = "| masks | defect pixels covered | " + " | ".join(f"{v} image / pixel" for v in variants) + " |"
    lines = ["## Coverage: AUROC against the fraction of each defect the mask covers", "",
             "Masks `gt@C` are the test ground truth degraded to C % of each defect (training masks empty); "
             "the others are maskers' own masks. Means over seeds and categories.", "", head,
             "|" + " --- |" * (2 + len(variants))]
    for m in names:
        p = pts[m]
        cov = "n/a" if p["coverage"] is None else f"{p['coverage']:.0%}"
        cells = []
        for v in variants:
            im, px = p["image"].get(v), p["pixel"].get(v)
            cells.append("-" if im is None else f"{im:.3f} / {px:.3f}")
        lines.append(f"| {m} | {cov} | " + " | ".join(cells) + " |")
    written: list[Path] = []
    if figure:
        from .figures import coverage_curve

        path = coverage_curve(folder / "figures" / "coverage" / "curve.png", pts, variants)
        written.append(path)
        lines += ["", f"Figure: `{path.relative_to(folder)}`"]
    return lines, written


__all__ = ["COVERAGES", "CoverageRunner", "coverage_points", "coverage_section", "defect_coverage",
           "degrade_masks", "gt_masker_name", "parse_gt_masker", "run_coverage"]
