import math

import numpy as np
import pytest
import torch

from fader_kit.model.metrics import aupro, auroc, f1_max, image_auroc, pixel_auroc, trapezoid_area


def test_auroc_hand_cases():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 3 of 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts one half
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert image_auroc(torch.tensor([0.2, 0.3, 0.9]), torch.tensor([0, 0, 1])) == 1.0


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_pixel_auroc_over_maps():
    maps = torch.zeros(2, 1, 4, 4)
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    maps[0, 0, 0, 0] = 1.0
    assert pixel_auroc(maps, masks) == 1.0
    maps[1, 0, 3, 3] = 2.0  # one normal pixel outranks the defect: 1 of 31 negatives
    assert math.isclose(pixel_auroc(maps, masks), 30 / 31)


def test_f1_max_hand_case():
    # thresholds: 0.8 -> P1 R.5 F.667; 0.4 -> P.5 R.5; 0.35 -> P.667 R1 -> F .8
    assert math.isclose(f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 0.8)


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 10:12, 3:9] = True
    rng = np.random.default_rng(0)
    noise = rng.random(masks.shape) * 0.1
    assert math.isclose(aupro(masks + noise, masks), 1.0, abs_tol=1e-6)
    assert aupro(-(masks + noise), masks) < 0.05


def test_auroc_equals_the_pair_count_exactly_with_ties():
    """The Mann-Whitney count over every (positive, negative) pair, ties one half, as one exact
    fraction: the fast group count must give the same correctly rounded float, not a close one."""
    from fractions import Fraction

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64, np.int64):
        s = rng.integers(0, 6, 300).astype(dtype) if dtype is np.int64 else rng.random(300).round(1).astype(dtype)
        y = rng.random(300) < 0.3
        pos, neg = s[y], s[~y]
        wins = sum(int((p > neg).sum()) * 2 + int((p == neg).sum()) for p in pos)
        assert auroc(s, y) == float(Fraction(wins, 2 * pos.size * neg.size))


def _aupro_pixelwise(maps, masks, fpr_limit=0.3, steps=200):
    """AUPRO by comparing every pixel with every threshold: the definition the sorted-count form in
    fader_kit.model.metrics must reproduce exactly."""
    from scipy import ndimage

    regions = [m[lab == r] for m, g in zip(maps, masks) for lab, n in [ndimage.label(g)] for r in range(1, n + 1)]
    normal = maps[~masks]
    fprs, pros = [], []
    for t in np.unique(np.quantile(normal, np.linspace(1.0, 0.0, steps)))[::-1]:
        fprs.append(float((normal > t).mean()))
        pros.append(float(np.mean([(reg > t).mean() for reg in regions])))
        if fprs[-1] > fpr_limit:
            break
    f, p = np.asarray(fprs), np.asarray(pros)
    if f[-1] > fpr_limit:
        p[-1] = p[-2] + (p[-1] - p[-2]) * (fpr_limit - f[-2]) / max(f[-1] - f[-2], 1e-12)
        f[-1] = fpr_limit
    xs, ys = np.r_[0.0, f], np.r_[0.0, p]
    return float((np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0).sum() / fpr_limit)


def test_aupro_equals_the_pixelwise_definition_exactly():
    rng = np.random.default_rng(5)
    for k in range(6):
        maps = rng.random((4, 24, 24)).round(2 if k % 2 else 6)
        masks = np.zeros((4, 24, 24), bool)
        for i in range(4):
            y, x = rng.integers(0, 18, 2)
            masks[i, y : y + int(rng.integers(1, 6)), x : x + int(rng.integers(1, 6))] = True
            maps[i][masks[i]] += rng.random() * 0.5
        assert aupro(maps, masks) == _aupro_pixelwise(maps, masks)


def test_trapezoid_area_by_hand():
    # (0,0) -> (1,2) -> (3,2): a triangle of area 1 plus a rectangle of area 4
    assert trapezoid_area(np.array([0.0, 2.0, 2.0]), np.array([0.0, 1.0, 3.0])) == 5.0
    assert trapezoid_area(np.array([1.0]), np.array([0.5])) == 0.0
