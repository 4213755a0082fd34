import math

import numpy as np
import pytest
import torch

from fader_kit.metrics import aupro, auroc, f1_max, image_auroc, pixel_auroc


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
