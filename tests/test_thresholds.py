"""Thresholds that mean what they say: the conformal rank, the promised false-alarm rate and its
interval (checked against simulation), raw-scale user thresholds, masks only in flagged images,
and a hold-out sized from the asked rate before any training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_cases import TINY, write_parts

from fader_kit.deploy.thresholds import (PixelQuantiles, Validation, calibration_from, conformal_rank,
                                   expected_false_alarm_rate, false_alarm_interval, min_holdout, order_threshold)
from fader_kit.deploy.detector import Detector, make_decision
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit import fit_detector, holdout_plan

PIXELS = PixelQuantiles(rates=[0.5, 0.1, 0.01, 0.0], values=[0.2, 0.5, 0.6, 0.7])


def test_conformal_rank_and_promise_by_hand() -> None:
    scores = np.arange(1.0, 21.0)  # 1..20
    assert conformal_rank(20, 0.1) == 19 and order_threshold(scores, 0.1) == 19.0  # ceil(0.9 * 21) = 19
    assert expected_false_alarm_rate(20, 19) == pytest.approx(2 / 21)  # at most the asked 0.1
    assert order_threshold(scores, 0.5) == 11.0  # ceil(0.5 * 21) = 11
    assert conformal_rank(20, 0.01) == 21 and order_threshold(scores, 0.01) == 20.0  # unresolvable: the maximum
    assert min_holdout(0.05) == 19 and min_holdout(0.01) == 99 and min_holdout(0.1) == 9
    assert conformal_rank(18, 0.05) > 18 and conformal_rank(19, 0.05) <= 19
    lo, hi = false_alarm_interval(40, 39)  # Beta(2, 39)
    assert 0.0 < lo < 2 / 41 < hi < 0.2


def test_calibration_reports_rank_expected_rate_interval_and_unresolved_rates() -> None:
    cal = calibration_from(list(np.linspace(0.1, 1.0, 40)), PIXELS, 1000, 0.05)
    assert cal.rank == 39 and cal.expected_false_alarm_rate == pytest.approx(2 / 41)
    assert cal.false_alarm_interval == pytest.approx(false_alarm_interval(40, 39))
    assert "expected false-alarm rate on new normal images 0.0488" in cal.summary() and not cal.warnings
    assert make_decision(cal).label == "false-alarm rate 0.05 (as fitted; expected 0.0488 on new normal images)"
    assert "expected 0.0976 on new normal images" in make_decision(cal, false_alarm_rate=0.1).label  # k = 37: 4/41
    tight = cal.with_rate(0.01)  # needs 99 held-out images
    assert tight.image_threshold == pytest.approx(1.0) and tight.expected_false_alarm_rate == pytest.approx(1 / 41)
    assert "cannot be resolved with 40 held-out normal images (it needs at least 99)" in tight.warnings[0]


def test_simulated_false_alarm_rate_matches_the_promise_within_its_interval() -> None:
    """Held-out and new normal scores drawn from one known distribution (uniform: a threshold t flags
    a share 1 - t of new images exactly).  Over many calibrations of N = 40 at rate 0.05 the mean rate
    is the promised (N + 1 - k) / (N + 1) <= 0.05 and 95 % of them lie in the stated interval; one
    calibration's rate observed on 200 000 new draws lies in its interval."""
    rng = np.random.default_rng(0)
    n, rate, reps = 40, 0.05, 4000
    k = conformal_rank(n, rate)
    promised = expected_false_alarm_rate(n, k)
    lo, hi = false_alarm_interval(n, k)
    held = np.sort(rng.random((reps, n)), axis=1)
    thresholds = np.array([order_threshold(row, rate) for row in held])
    rates = 1.0 - thresholds
    se = rates.std() / np.sqrt(reps)
    assert abs(rates.mean() - promised) < 4 * se and promised <= rate
    inside = float(((rates >= lo) & (rates <= hi)).mean())
    assert abs(inside - 0.95) < 0.02
    one = rng.random(n)
    t = order_threshold(one, rate)
    observed = float((rng.random(200_000) > t).mean())
    assert lo <= observed <= hi and abs(observed - (1 - t)) < 0.003


def test_user_thresholds_are_raw_scores() -> None:
    """Before: T and the F1 threshold went through the clipped normalisation (a raw 5.0 judged normal
    above 2t - low; T = 1 never flagged)."""
    cal = calibration_from(list(np.linspace(0.1, 1.0, 40)), PIXELS, 1000, 0.05)
    assert make_decision(cal, "1").decide(np.array([0.9, 1.5]))[1].tolist() == [False, True]
    assert make_decision(cal, 4.0).decide(np.array([5.0, 3.0]))[1].tolist() == [True, False]
    v = Validation(folder="v", n_normal=5, n_defective=5, image_auroc=1.0, f1_threshold=4.0, f1=1.0,
                   false_alarm_rate_at_f1=0.0)
    f1 = make_decision(cal.model_copy(update={"validation": v}), "f1")
    assert f1.image_threshold == 4.0 and f1.decide(np.array([5.0, 3.9]))[1].tolist() == [True, False]
    assert make_decision(cal).decide(np.array([5.0]))[1].tolist() == [True]
    for bad in ("x", "nan", "inf"):
        with pytest.raises(ConfigError, match="--threshold"):
            make_decision(cal, bad)


def test_mask_is_empty_unless_the_image_is_flagged() -> None:
    cal = calibration_from(list(np.linspace(0.1, 1.0, 40)), PIXELS, 1000, 0.05)
    decision = make_decision(cal)
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2, :2] = cal.pixel_threshold + 0.05  # above the pixel threshold, image score below its threshold
    maps[1, 0, :2, :2] = cal.image_threshold + 0.1
    normal, flagged = Detector.judge(maps, maps.flatten(1).amax(1), decision, [None, None])
    assert not normal.anomalous and not bool(normal.mask.any())
    assert flagged.anomalous and int(flagged.mask.sum()) == 4


def test_holdout_is_sized_from_the_rate_and_an_unresolvable_rate_is_said() -> None:
    assert holdout_plan(210, 0.15, 0.05) == (32, [])
    k, notes = holdout_plan(210, 0.15, 0.01)
    assert k == 99 and "needs at least 99" in notes[0]
    assert holdout_plan(210, 40, 0.05) == (40, [])
    k, notes = holdout_plan(60, 0.15, 0.01)  # 99 would leave fewer than half to train on
    assert k == 9 and "cannot be resolved with 9 held-out images" in notes[0]
    with pytest.raises(ConfigError, match="--holdout 2.5"):
        holdout_plan(60, 2.5, 0.05)
    with pytest.raises(ConfigError, match="leaves fewer than 5"):
        holdout_plan(12, 10, 0.05)


def test_fit_says_an_unresolvable_rate_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fader_kit.model.pipeline as pipeline

    write_parts(tmp_path / "normal", 12)
    said: list[str] = []

    def no_training(*args: object, **kwargs: object) -> None:
        raise RuntimeError("training started")

    monkeypatch.setattr(pipeline, "ear_stage", no_training)
    with pytest.raises(RuntimeError, match="training started"):
        fit_detector(tmp_path / "normal", masker="patch_stats", profile=TINY,
                     head_variant="pseudo_focused", false_alarm_rate=0.01, log=said.append)
    assert any("cannot be resolved with 5 held-out images" in line for line in said)
