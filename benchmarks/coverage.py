"""``fader-kit bench coverage``: the paper's thesis, measured.

FADeR claims to rescue EAR when the binary mask misses part of a defect.  This benchmark feeds
EAR and FADeR masks that cover a *controlled* fraction c of every defect: the ground truth of
the test images, degraded per defect (connected component) to c of its area by dropping the part
beyond a random sweep line with a ragged edge (:func:`degrade_masks`, seeded).  c = 100 % is an
oracle masker, c = 0 % a masker that never fires.  Each offline masker's own masks run beside
them for reference, on the same U-Net and seeds.

Ground truth exists only for test images, so the pseudo-maskers ``gt@C`` have *empty* training
masks: FADeR trains on the random blobs alone (the U-Net is blob-trained anyway, shared by every
masker).  ``gt@C`` is a mask source of the engine (:mod:`fader_kit.engine.sources`), so the study
is a grid like every table: serial or on Ray, into the same store, with the usual report, seeds and
paired intervals; :func:`coverage_section` adds the table and the curve figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor

from fader_kit.engine.aggregate import mean_over_seeds
from fader_kit.engine.sources import GT_PREFIX, degrade_masks, gt_masker_name, parse_gt_masker
from fader_kit.engine.store import ResultRow
from fader_kit.engine.unit_kinds import ModelFacts

COVERAGES: tuple[int, ...] = (0, 25, 50, 75, 100)


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


# -- report -----------------------------------------------------------------------------------------
def coverage_points(rows: list[ResultRow]) -> dict[str, dict[str, Any]]:
    """masker -> {coverage (measured mean over seeds and categories), per variant image/pixel AUROC means}."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.unit.table != "coverage" or r.status != "ok":
            continue
        d = out.setdefault(r.unit.masker, {"coverage": [], "image": {}, "pixel": {}})
        diag = ModelFacts.of(r).diagnostics
        cov = diag.mask.defect_pixels_masked if diag is not None else None
        if cov is not None:
            d["coverage"].append(cov)
        d["image"].setdefault(r.unit.variant, []).append(r.image_auroc)
        d["pixel"].setdefault(r.unit.variant, []).append(r.pixel_auroc)
    return {m: {"coverage": mean_over_seeds(d["coverage"]),
                "image": {v: mean_over_seeds(x) for v, x in d["image"].items()},
                "pixel": {v: mean_over_seeds(x) for v, x in d["pixel"].items()}} for m, d in out.items()}


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


__all__ = ["COVERAGES", "GT_PREFIX", "coverage_points", "coverage_section", "defect_coverage", "degrade_masks",
           "gt_masker_name", "parse_gt_masker"]
