"""The protocol that tells a gain from noise: binned AUROC, paired bootstrap, verdicts."""
import numpy as np
import pytest
import torch

from fader_kit.model.metrics import image_auroc, pixel_auroc
from fader_kit.engine.stats import ScoreDetail, SeedSummary, hist_auroc, paired_bootstrap, verdict


def _case(seed: int, boost: float = 0.0, n: int = 40):
    """Half normal, half defective images; defect pixels score higher by 0.3 (+ boost)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * (n // 2) + [1] * (n // 2))
    gt = torch.zeros(n, 1, 32, 32)
    gt[n // 2 :, :, 8:16, 8:16] = 1
    maps = torch.rand(n, 1, 32, 32, generator=g) + gt * (0.3 + boost)
    return maps, labels, gt


def test_hist_auroc_hand_values():
    # positives in bins 1 and 2, negatives in bins 0 and 1: P(pos > neg) = (1*1 + 1*2)/4 = 0.75, tie 0.5 * 1/4
    assert hist_auroc(np.array([[0, 1, 1]]), np.array([[1, 1, 0]]))[0] == pytest.approx(0.875)
    assert np.isnan(hist_auroc(np.array([[0, 0]]), np.array([[1, 1]]))[0])


def test_score_detail_matches_the_exact_metrics():
    maps, labels, gt = _case(0)
    d = ScoreDetail.from_maps(maps, labels, gt)
    assert d.image_auroc() == pytest.approx(image_auroc(maps.flatten(1).amax(1), labels))
    assert d.pixel_auroc() == pytest.approx(pixel_auroc(maps, gt), abs=1e-3)  # binned: ties within a bin
    again = ScoreDetail.from_dict(d.to_dict())
    assert np.array_equal(again.pixel_pos, d.pixel_pos) and np.array_equal(again.image_scores, d.image_scores)


def test_paired_bootstrap_finds_a_real_gain_and_no_difference_for_the_same_model():
    before = [ScoreDetail.from_maps(*_case(s)) for s in (0, 1)]
    after = [ScoreDetail.from_maps(*_case(s, boost=0.2)) for s in (0, 1)]
    cmp = paired_bootstrap(before, after, resamples=300, seed=0)
    pix = cmp["pixel_auroc"]
    assert pix.verdict == "gain" and pix.ci_low > 0 and pix.seeds == 2
    assert pix.delta_mean == pytest.approx(np.mean([aft.pixel_auroc() - bef.pixel_auroc() for bef, aft in zip(before, after)]))
    same = paired_bootstrap(before, before, resamples=300, seed=0)
    assert all(c.verdict == "no difference" and c.ci_low == c.ci_high == 0 for c in same.values())
    # the same seed gives the same interval
    assert paired_bootstrap(before, after, resamples=300, seed=0) == cmp


def test_paired_bootstrap_interval_covers_noise_as_no_difference():
    """Two independent draws of the same model (different noise): the interval must include 0."""
    before = [ScoreDetail.from_maps(*_case(s)) for s in (0, 1, 2)]
    after = [ScoreDetail.from_maps(*_case(s + 10)) for s in (0, 1, 2)]
    cmp = paired_bootstrap(before, after, resamples=500, seed=0)
    assert cmp["image_auroc"].ci_low <= 0 <= cmp["image_auroc"].ci_high


def test_paired_bootstrap_refuses_unpaired_results():
    a = ScoreDetail.from_maps(*_case(0))
    maps, labels, gt = _case(1)
    b = ScoreDetail.from_maps(maps, labels.flip(0), gt.flip(0))
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap([a], [b])
    with pytest.raises(ValueError, match="same positive number"):
        paired_bootstrap([a], [])


def test_verdict_and_seed_summary():
    assert verdict(0.01, 0.05) == "gain" and verdict(-0.05, -0.01) == "loss" and verdict(-0.01, 0.02) == "no difference"
    s = SeedSummary.of([0.5, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1414, abs=1e-4) and s.n == 2
    assert SeedSummary.of([0.5]).std == 0.0 and SeedSummary.of([0.5]).text() == "0.500"
