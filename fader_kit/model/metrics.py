"""Detection and localisation metrics with anomalib's names: image / pixel AUROC, AUPRO, F1-max.

AUROC is the Mann-Whitney statistic (ties count one half), exact and O(n log n), so pixel
AUROC over millions of pixels needs no threshold sweep: twice the statistic is an integer, counted
in int64 over the groups of tied scores, and the AUROC is one correctly rounded division.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def auroc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = anomalous)."""
    s = _np(scores).ravel()
    if s.dtype not in (np.float32, np.float64):  # float32 maps are sorted as they are: same order
        s = s.astype(np.float64)
    y = _np(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes, got {n_pos} positives and {n_neg} negatives")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    order = np.argsort(s)  # any sort: tied scores are handled as groups below
    s, y = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]  # first index of each group of equal scores
    pos = np.add.reduceat(y.astype(np.int64), starts)
    neg = np.diff(np.r_[starts, s.size]) - pos
    below = np.cumsum(neg) - neg  # negatives with a lower score than the group
    twice_u = int((pos * (2 * below + neg)).sum())  # each tie with a negative counts one half
    return twice_u / (2 * n_pos * n_neg)


def image_auroc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    return auroc(scores, labels)


def pixel_auroc(maps: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> float:
    """AUROC over every pixel of every test image (``maps`` and ``masks`` of equal shape)."""
    m, g = _np(maps), _np(masks)
    if m.shape != g.shape:
        raise ValueError(f"maps {m.shape} and masks {g.shape} must have the same shape")
    return auroc(m, g)


def f1_max(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Best F1 over all thresholds of ``scores``."""
    s = _np(scores).astype(np.float64).ravel()
    y = _np(labels).astype(bool).ravel()
    if not y.any():
        raise ValueError("F1-max needs at least one positive")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # thresholds between distinct scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())


def trapezoid_area(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the polyline through (x, y): numpy's trapezoid rule, in the same operations.

    Written out because the function is ``np.trapezoid`` in numpy 2 and ``np.trapz`` in numpy 1,
    and both are supported.
    """
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def aupro(maps: Tensor | np.ndarray, masks: Tensor | np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    Each connected defect region counts equally whatever its size (MVTec AD's localisation
    metric).  Thresholds are ``steps`` quantiles of the normal pixels' scores.
    """
    from scipy import ndimage  # imported here: the rest of the module does not need scipy

    m = _np(maps).astype(np.float64)
    g = _np(masks).astype(bool)
    if m.shape != g.shape:
        raise ValueError(f"maps {m.shape} and masks {g.shape} must have the same shape")
    m = m.reshape(-1, *m.shape[-2:])
    g = g.reshape(-1, *g.shape[-2:])
    if not g.any() or g.all():
        raise ValueError("AUPRO needs defect and normal pixels")
    regions = []
    for i in range(g.shape[0]):
        labelled, n = ndimage.label(g[i])
        for r in range(1, n + 1):
            regions.append(np.sort(m[i][labelled == r]))
    normal = m[~g]
    thresholds = np.unique(np.quantile(normal, np.linspace(1.0, 0.0, steps)))[::-1]
    normal_sorted = np.sort(normal)
    sizes = np.array([reg.size for reg in regions])
    fprs, pros = [], []
    for t in thresholds:  # counts above t from sorted values: the same fractions as comparing every pixel
        fpr = (normal.size - np.searchsorted(normal_sorted, t, side="right")) / normal.size
        above = sizes - np.array([np.searchsorted(reg, t, side="right") for reg in regions])
        pro = float(np.mean(above / sizes))
        fprs.append(fpr)
        pros.append(pro)
        if fpr > fpr_limit:
            break
    fprs_a, pros_a = np.asarray(fprs), np.asarray(pros)
    if fprs_a[-1] > fpr_limit:  # interpolate the last segment to the limit
        j = len(fprs_a) - 1
        x0, x1 = fprs_a[j - 1], fprs_a[j]
        y0, y1 = pros_a[j - 1], pros_a[j]
        pros_a[j] = y0 + (y1 - y0) * (fpr_limit - x0) / max(x1 - x0, 1e-12)
        fprs_a[j] = fpr_limit
    fprs_a = np.r_[0.0, fprs_a]
    pros_a = np.r_[0.0, pros_a]
    return float(trapezoid_area(pros_a, fprs_a) / fpr_limit)
