"""The verdict on images: :class:`Prediction` (one image's score, decision and map) and the
:class:`Decision` that turns raw scores into verdicts -- the calibrated threshold, one re-derived at
another false-alarm rate, the validation's F1-optimal one or a user's number, chosen at predict time
without refitting (:func:`make_decision`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from fader_kit.deploy.thresholds import Calibration
from fader_kit.errors import ConfigError

@dataclass(frozen=True)
class Prediction:
    """One image's verdict.  ``anomaly_map`` and ``mask`` are ``[S, S]`` at the model's side;
    ``max_location`` is the (x, y) of the map's maximum in those pixels."""

    score: float
    normalised_score: float
    anomalous: bool
    anomaly_map: Tensor
    mask: Tensor
    max_location: tuple[int, int]
    source: str | None = None


@dataclass(frozen=True)
class Decision:
    """The threshold predictions are judged against, on the *raw* score scale: the calibrated one,
    one re-derived at another false-alarm rate, the validation's F1-optimal one, or a user's number
    (``threshold``).  The normalised score stays on the calibrated scale (a display, never the rule);
    the pixel threshold is the calibrated one, and only flagged images get a mask."""

    calibration: Calibration
    threshold: float | None = None  # raw image score; None: the calibration's image threshold
    label: str = ""

    @property
    def pixel_threshold(self) -> float:
        return self.calibration.pixel_threshold

    @property
    def image_threshold(self) -> float:
        return self.calibration.image_threshold if self.threshold is None else self.threshold

    def decide(self, scores: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(normalised scores, decisions)`` as float64 / bool arrays: flagged when the raw score is
        above the image threshold."""
        raw = scores.detach().double().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores, np.float64)
        return self.calibration.normalise(raw), raw > self.image_threshold


def make_decision(calibration: Calibration, threshold: float | str | None = None,
                  false_alarm_rate: float | None = None) -> Decision:
    """The :class:`Decision` for the predict-time options: ``threshold`` a raw image score (flag above
    it; ``"f1"``: the validation's F1-optimal one), or ``false_alarm_rate`` re-derived from the held-out
    normal scores; neither: the calibration as fitted."""
    if threshold is not None and false_alarm_rate is not None:
        raise ConfigError("give --threshold or --false-alarm-rate, not both")
    if false_alarm_rate is not None:
        cal = calibration.with_rate(false_alarm_rate)
        return Decision(cal, None, f"false-alarm rate {cal.false_alarm_rate:g} (image threshold "
                                   f"{cal.image_threshold:.6g}, {cal.n_images} held-out normal images{_expected(cal)})")
    if threshold == "f1":
        if calibration.validation is None:
            raise ConfigError("--threshold f1 needs a detector fitted with --validation")
        t = calibration.validation.f1_threshold
        return Decision(calibration, t, f"F1-optimal on the validation set (raw score above {t:.6g})")
    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"argument --threshold {threshold!r}: expected a raw image score (a number, e.g. "
                              f"{calibration.image_threshold:.6g}, the calibrated one) or 'f1'") from None
        if not math.isfinite(t):
            raise ConfigError(f"argument --threshold {threshold!r}: expected a finite raw image score")
        above = sum(s > t for s in calibration.normal_scores)
        return Decision(calibration, t, f"raw score above {t:.6g} ({above} of {calibration.n_images} held-out normal "
                                        "images above it)")
    return Decision(calibration, None, f"false-alarm rate {calibration.false_alarm_rate:g} (as fitted"
                                       f"{_expected(calibration)})")


def _expected(calibration: Calibration) -> str:
    """``"; expected ... on new normal images"`` where the calibration states it (folders fitted since it does)."""
    e = calibration.expected_false_alarm_rate
    return "" if e is None else f"; expected {e:.4f} on new normal images"
