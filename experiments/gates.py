"""Gate strategies only the experiments use: gates from the masker's score, gates that end at the
masker's threshold, and gates held open on masked patches."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.model.config import FaderConfig
from fader_kit.errors import UserError
from fader_kit.model.gates import GateStrategy, HeadGates
from fader_kit.model.head_inputs import HeadHost


class ScoreGates(HeadGates):
    """No learned head: l_hat is the masker's own score map (max over each patch), put through the
    normaliser (calibrated on the normal training images); the head is still built and trained."""

    name = "score"
    own_reads_scores = True
    own_learned = False

    def predict(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        if scores is None:
            raise UserError("gates 'score' read the masker's score map: pass scores=")
        return F.max_pool2d(scores.float(), self.config.patch_size).flatten(1)


class ThresholdEnd(GateStrategy):
    """Modifier: the calibrated gates reach 0 at the masker's own threshold instead of at median +
    width * (quantile - median), so they close over the band of scores between the normal patches'
    quantile and the score at which the masker would have masked the pixel."""

    name = "threshold_end"
    modifier = True
    own_reads_threshold = True

    def __init__(self, config: FaderConfig, inner: GateStrategy | None = None) -> None:
        if config.normaliser != "calibrated":
            raise ValueError("gates 'threshold_end' set the end of the calibrated normaliser: they need "
                             "normaliser='calibrated'")
        super().__init__(config, inner)

    def calibration_end(self, host: HeadHost, threshold: float | None) -> float | None:
        if threshold is None and host.masker is not None:
            threshold = host.masker.threshold
        if threshold is None:
            raise UserError("gates 'threshold_end' close at the masker's threshold: pass threshold= (the fitted "
                            "masker's .threshold) or wrap a fitted masker that sets one")
        return float(threshold)


class MaskedOne(GateStrategy):
    """Modifier: the gate is forced to 1 on every patch with an M_B pixel, so the skips keep carrying
    the mosaic hint there and the gates only act on the patches the masker left."""

    name = "masked_one"
    modifier = True

    def grid(self, host: HeadHost, pred: Tensor, grid: tuple[int, int], binary_mask: Tensor | None,
             calibration: Tensor | None) -> Tensor:
        g = super().grid(host, pred, grid, binary_mask, calibration)
        if binary_mask is None:
            raise ValueError("gates 'masked_one' need the binary mask M_B")
        masked = F.max_pool2d(binary_mask.float(), self.config.patch_size) > 0
        return torch.where(masked, torch.ones_like(g), g)


GATES: tuple[type[GateStrategy], ...] = (ScoreGates, ThresholdEnd, MaskedOne)
