"""Thresholds and score normalisation from normal images alone.

A deployer rarely has labelled defects, so :func:`calibrate` works from the scores of normal
images held out of training (scores of training images are biased low: the model has seen them):

* **image threshold at a false-alarm rate** ``r`` (split conformal): with the N held-out scores
  sorted ascending ``s_1 <= ... <= s_N``, the threshold is ``s_k`` with ``k = ceil((1 - r)(N + 1))``
  and an image is flagged when its score is *above* it.  A new normal image is exchangeable with
  the held-out ones, so its score exceeds ``s_k`` with probability exactly ``(N + 1 - k) / (N + 1)``
  (no ties), which is at most ``r``: that is the *expected* false-alarm rate on new normal images,
  reported as such.  The rate of one fitted detector varies with the draw of its N held-out images:
  it follows ``Beta(N + 1 - k, k)``, whose central 95 % interval is reported with it.  When
  ``k > N`` (``r < 1 / (N + 1)``) the rate cannot be resolved: the threshold is the highest held-out
  score, its expected rate ``1 / (N + 1)`` exceeds ``r``, and a warning says how many held-out images
  the rate needs (:func:`min_holdout`; ``fit`` sizes its hold-out from it before training).
* **pixel threshold** at the same rate over every pixel of the held-out anomaly maps (millions of
  values, so the interpolated quantile is used); a summary of those quantiles is stored so the
  rate can be changed later without the maps.  It only outlines *where* in a flagged image the
  map is high: the mask of an image that is not flagged is empty (``Detector.judge``).
* **normalised score**: ``0.5 + 0.5 (s - t) / (t - low)`` clipped to [0, 1], with ``t`` the
  threshold and ``low`` the lowest held-out normal score.  This is anomalib's convention (the
  threshold sits at 0.5, normal images fall in [0, 0.5]); the span below the threshold is used
  on both sides because normal images alone say nothing about how far above it defects score.
  The raw score stays available for ranking (clipping ties the strongest anomalies at 1).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from fader_kit.errors import ConfigError
from fader_kit.model.fusion import FusionScales

#: False-alarm rates at which the pixel-score quantiles of the held-out maps are stored (0 = max),
#: so ``predict --false-alarm-rate`` can re-derive the pixel threshold without the maps.
PIXEL_RATES: tuple[float, ...] = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4, 2e-4, 1e-4, 1e-5,
                                  1e-6, 0.0)


#: The most held-out normal scores a calibration may hold (a bound on what a loaded file may ask for).
MAX_NORMAL_SCORES = 10_000_000


def check_rate(rate: float, argument: str = "--false-alarm-rate") -> float:
    if not isinstance(rate, (int, float)) or not 0 < rate < 1 or math.isnan(rate):
        raise ConfigError(f"argument {argument} {rate!r}: expected a rate between 0 and 1 (exclusive), e.g. 0.01")
    return float(rate)


#: the central probability of the reported false-alarm interval
INTERVAL_LEVEL = 0.95


def conformal_rank(n: int, rate: float) -> int:
    """``k = ceil((1 - rate)(n + 1))``: the rank (1-based, ascending) of the held-out score that keeps
    the expected false-alarm rate on new images at or below ``rate``; ``k > n`` means unresolvable."""
    return max(1, math.ceil((1.0 - rate) * (n + 1) - 1e-9))  # the tolerance keeps 0.9 * 20 at 18, not 19


def min_holdout(rate: float) -> int:
    """The fewest held-out normal images that resolve ``rate`` (``conformal_rank(n, rate) <= n``)."""
    n = max(1, math.floor(1.0 / rate) - 1)
    while conformal_rank(n, rate) > n:
        n += 1
    return n


def expected_false_alarm_rate(n: int, rank: int) -> float:
    """``(n + 1 - k) / (n + 1)``: the probability that a new normal score exceeds the k-th smallest of
    ``n`` exchangeable held-out ones (``k`` clipped to ``n``)."""
    return (n + 1 - min(rank, n)) / (n + 1)


def false_alarm_interval(n: int, rank: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of the false-alarm rate of one calibration: ``Beta(n + 1 - k, k)``
    (the share of new normal scores above the k-th smallest of ``n`` held-out ones)."""
    from scipy.stats import beta

    k = min(rank, n)
    tail = (1.0 - level) / 2.0
    dist = beta(n + 1 - k, k)
    return float(dist.ppf(tail)), float(dist.ppf(1.0 - tail))


def order_threshold(scores: Sequence[float] | np.ndarray, rate: float) -> float:
    """The held-out score of rank :func:`conformal_rank` (the highest when that rank exceeds N)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("a threshold needs at least one normal score")
    return float(s[min(conformal_rank(s.size, rate), s.size) - 1])


def false_alarm_rate(scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Share of ``scores`` flagged (above ``threshold``)."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else float("nan")


def normalise(scores: Tensor | np.ndarray | float, threshold: float, low: float) -> np.ndarray:
    """``0.5 + 0.5 (s - threshold) / (threshold - low)`` clipped to [0, 1] (float64)."""
    s = scores.detach().double().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores, dtype=np.float64)
    span = max(threshold - low, 1e-12 * max(abs(threshold), 1.0))
    return np.clip(0.5 + 0.5 * (s - threshold) / span, 0.0, 1.0)


def denormalise(value: float, threshold: float, low: float) -> float:
    """The raw score whose normalised value is ``value`` (the inverse of :func:`normalise` inside (0, 1))."""
    span = max(threshold - low, 1e-12 * max(abs(threshold), 1.0))
    return threshold + (value - 0.5) * 2.0 * span


class PixelQuantiles(BaseModel):
    """Pixel scores of the held-out normal maps: ``values[i]`` is exceeded by a share ``rates[i]``."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not 1 <= len(v) <= 64 or any(not 0 <= r <= 1 for r in v) or any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError("rates must hold 1 to 64 rates in [0, 1], in descending order")
        if v[0] <= 0:
            raise ValueError("rates must hold a positive rate")
        return v

    @model_validator(mode="after")
    def _paired(self) -> "PixelQuantiles":
        if len(self.values) != len(self.rates):
            raise ValueError(f"values must hold one value per rate ({len(self.rates)}), got {len(self.values)}")
        return self

    rates: list[float]
    values: list[float]

    def at(self, rate: float) -> float:
        """The pixel threshold at false-alarm rate ``rate``: interpolated in log(rate) between the
        stored rates; below the smallest positive stored rate, the maximum."""
        pos = [(r, v) for r, v in zip(self.rates, self.values) if r > 0]
        top = max(self.values)
        if rate < pos[-1][0]:
            return top
        if rate >= pos[0][0]:
            return pos[0][1]
        for (r_hi, v_lo), (r_lo, v_hi) in zip(pos, pos[1:]):
            if r_lo <= rate <= r_hi:
                w = (math.log(r_hi) - math.log(rate)) / (math.log(r_hi) - math.log(r_lo))
                return v_lo + w * (v_hi - v_lo)
        return top  # not reached: the stored rates are descending


class Validation(BaseModel):
    """What a labelled validation set (``fit --validation``) adds: AUROC and the F1-optimal threshold."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    @field_validator("n_normal", "n_defective")
    @classmethod
    def _counts(cls, v: int) -> int:
        if v < 1:
            raise ValueError("a validation set holds at least one normal and one defective image")
        return v

    @field_validator("image_auroc", "pixel_auroc", "f1", "false_alarm_rate_at_f1")
    @classmethod
    def _share(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"must lie in [0, 1], got {v}")
        return v

    folder: str
    n_normal: int
    n_defective: int
    image_auroc: float
    pixel_auroc: float | None = None
    f1_threshold: float
    f1: float
    false_alarm_rate_at_f1: float


class Calibration(BaseModel):
    """Thresholds and normalisation of one detector, estimated on held-out normal images."""

    # every number finite: a NaN threshold would load and then never flag anything
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    @field_validator("false_alarm_rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"must lie between 0 and 1 (exclusive), got {v}")
        return v

    @field_validator("normal_false_alarm_rate")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"must lie in [0, 1], got {v}")
        return v

    @field_validator("normal_scores")
    @classmethod
    def _scores(cls, v: list[float]) -> list[float]:
        if not 1 <= len(v) <= MAX_NORMAL_SCORES:
            raise ValueError(f"must hold 1 to {MAX_NORMAL_SCORES} held-out normal scores, got {len(v)}")
        return v

    @field_validator("n_pixels")
    @classmethod
    def _pixels(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _counted(self) -> "Calibration":
        if self.n_images != len(self.normal_scores):
            raise ValueError(f"n_images {self.n_images} does not count the {len(self.normal_scores)} normal_scores")
        return self

    false_alarm_rate: float = Field(description="the rate both thresholds were set for")
    image_threshold: float = Field(description="raw image score above which an image is flagged")
    low: float = Field(description="lowest held-out normal image score: normalised 0")
    pixel_threshold: float = Field(description="anomaly-map value above which a pixel is in the mask")
    pixel_low: float = Field(description="median held-out normal pixel score: normalised 0 of the heat map")
    normal_scores: list[float] = Field(description="image scores of the held-out normal images")
    normal_false_alarm_rate: float = Field(description="share of the held-out normal images above image_threshold")
    n_images: int
    n_pixels: int
    pixel_quantiles: PixelQuantiles
    validation: Validation | None = None
    warnings: list[str] = Field(default_factory=list)
    rank: int | None = Field(None, description="k: the image threshold is the k-th smallest held-out score")
    expected_false_alarm_rate: float | None = Field(
        None, description="(N + 1 - k) / (N + 1): the expected share of new normal images flagged")
    false_alarm_interval: list[float] | None = Field(
        None, description="central 95 % interval of one calibration's false-alarm rate: Beta(N + 1 - k, k), "
        "[low, high]")
    fusion: FusionScales | None = Field(
        None, description="the fused score's scales, rule and weight (fader_kit.model.fusion), for a detector that "
        "scores with the fused map; its thresholds are on that map's scale")

    @model_validator(mode="after")
    def _promise(self) -> "Calibration":
        """The conformal fields, when present, agree with the scores they were derived from."""
        if self.rank is not None and not 1 <= self.rank <= self.n_images:
            raise ValueError(f"rank {self.rank} is not between 1 and n_images {self.n_images}")
        if self.expected_false_alarm_rate is not None and not 0 <= self.expected_false_alarm_rate <= 1:
            raise ValueError(f"expected_false_alarm_rate {self.expected_false_alarm_rate} is not in [0, 1]")
        interval = self.false_alarm_interval
        if interval is not None and (len(interval) != 2 or not 0 <= interval[0] <= interval[1] <= 1):
            raise ValueError(f"false_alarm_interval {interval} is not an ordered [low, high] within [0, 1]")
        return self

    def with_rate(self, rate: float) -> "Calibration":
        """The same calibration re-derived at another false-alarm rate (from the stored scores)."""
        rate = check_rate(rate)
        return calibration_from(self.normal_scores, self.pixel_quantiles, self.n_pixels, rate,
                                self.validation).model_copy(update={"fusion": self.fusion})

    def normalise(self, scores: Tensor | np.ndarray | float) -> np.ndarray:
        return normalise(scores, self.image_threshold, self.low)

    def normalise_map(self, maps: Tensor) -> Tensor:
        """Anomaly maps on the same scale as the scores: the pixel threshold at 0.5."""
        span = max(self.pixel_threshold - self.pixel_low, 1e-12)
        return (0.5 + 0.5 * (maps - self.pixel_threshold) / span).clamp(0.0, 1.0)

    def summary(self) -> str:
        n = self.n_images
        lines = [f"image threshold {self.image_threshold:.6g} at false-alarm rate {self.false_alarm_rate:g} "
                 f"(rests on {n} held-out normal images; {self.normal_false_alarm_rate:.3f} of them flagged)"]
        if self.rank is not None and self.expected_false_alarm_rate is not None and self.false_alarm_interval:
            lo, hi = self.false_alarm_interval
            lines.append(f"expected false-alarm rate on new normal images {self.expected_false_alarm_rate:.4f} "
                         f"(threshold = held-out score {min(self.rank, n)} of {n}; this calibration's rate lies in "
                         f"[{lo:.4f}, {hi:.4f}] with probability {INTERVAL_LEVEL:g})")
        lines += [f"pixel threshold {self.pixel_threshold:.6g} (rests on {self.n_pixels} pixels of the same images; "
                  "masks are drawn in flagged images only)",
                  f"normalised score: {self.low:.6g} -> 0, {self.image_threshold:.6g} -> 0.5"]
        if self.validation is not None:
            v = self.validation
            lines.append(f"validation ({v.n_normal} normal, {v.n_defective} defective): image AUROC "
                         f"{v.image_auroc:.3f}" + (f", pixel AUROC {v.pixel_auroc:.3f}" if v.pixel_auroc is not None
                                                    else "")
                         + f"; F1-optimal threshold {v.f1_threshold:.6g} (raw score; F1 {v.f1:.3f}, false-alarm "
                         f"rate on its normal images {v.false_alarm_rate_at_f1:.3f})")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def rate_warnings(n: int, rate: float) -> list[str]:
    """The warning when ``n`` held-out images cannot resolve ``rate`` (see the module notes)."""
    if conformal_rank(n, rate) > n:
        return [f"the asked false-alarm rate {rate:g} cannot be resolved with {n} held-out normal images (it needs "
                f"at least {min_holdout(rate)}): the image threshold is the highest held-out score and its expected "
                f"false-alarm rate on new normal images is 1/{n + 1} = {1 / (n + 1):.4f}; hold out more normal images "
                f"(--holdout, or more images)"]
    return []


def calibration_from(normal_scores: Sequence[float], pixels: PixelQuantiles, n_pixels: int, rate: float,
                     validation: Validation | None = None) -> Calibration:
    scores = [float(s) for s in normal_scores]
    n = len(scores)
    t = order_threshold(scores, rate)
    k = conformal_rank(n, rate)
    return Calibration(
        false_alarm_rate=rate, image_threshold=t, low=float(min(scores)), pixel_threshold=pixels.at(rate),
        pixel_low=pixels.at(0.5), normal_scores=scores, normal_false_alarm_rate=false_alarm_rate(scores, t),
        n_images=n, n_pixels=n_pixels, pixel_quantiles=pixels, validation=validation,
        warnings=rate_warnings(n, rate), rank=min(k, n), expected_false_alarm_rate=expected_false_alarm_rate(n, k),
        false_alarm_interval=list(false_alarm_interval(n, k)),
    )


def calibrate(normal_maps: Tensor, rate: float) -> Calibration:
    """A :class:`Calibration` from the anomaly maps ``[N, 1, H, W]`` of held-out normal images."""
    from fader_kit.util.quantiles import quantiles

    rate = check_rate(rate)
    if normal_maps.shape[0] < 1:
        raise ValueError("calibration needs the maps of at least one held-out normal image")
    scores = normal_maps.flatten(1).amax(dim=1)
    pixel_values = quantiles(normal_maps, [1.0 - r for r in PIXEL_RATES], what="pixel calibration")
    pixels = PixelQuantiles(rates=list(PIXEL_RATES), values=pixel_values)
    return calibration_from(scores.tolist(), pixels, int(normal_maps.numel()), rate)


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)``: the threshold (flag when the score is above it) of the highest F1,
    half-way between the lowest flagged score and the highest score below it."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    fp = np.cumsum(1.0 - y)
    positives = max(y.sum(), 1.0)
    last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / positives
    f1 = np.where(last, 2 * precision * recall / np.maximum(precision + recall, 1e-12), -1.0)
    i = int(np.argmax(f1))
    below = s[i + 1] if i + 1 < s.size else s[i] - max(abs(s[i]) * 1e-6, 1e-9)
    return float((s[i] + below) / 2.0), float(f1[i])


def validate(calibration: Calibration, maps: Tensor, labels: Tensor, gt_masks: Tensor | None, folder: str) -> Calibration:
    """``calibration`` with a :class:`Validation` from labelled images (their maps, labels, masks)."""
    from fader_kit.model.metrics import image_auroc, pixel_auroc

    labels_np = labels.detach().cpu().numpy().astype(np.int64)
    scores = maps.flatten(1).amax(dim=1).double().cpu().numpy()
    if labels_np.min() == labels_np.max():
        raise ConfigError(f"--validation {folder}: needs normal and defective images, got only "
                          f"{'defective' if labels_np[0] else 'normal'} ones")
    t, f1 = f1_threshold(scores, labels_np)
    pix = None
    if gt_masks is not None and bool(gt_masks.any()):
        pix = pixel_auroc(maps, gt_masks)
    v = Validation(folder=folder, n_normal=int((labels_np == 0).sum()), n_defective=int(labels_np.sum()),
                   image_auroc=image_auroc(torch.from_numpy(scores), torch.from_numpy(labels_np)), pixel_auroc=pix,
                   f1_threshold=t, f1=f1, false_alarm_rate_at_f1=false_alarm_rate(scores[labels_np == 0], t))
    return calibration.model_copy(update={"validation": v})
