"""``mean_diff``: an example third-party masker for fader-kit, written as plainly as possible.

The score of a pixel is its colour distance to the mean normal image; the mask keeps what lies
above a quantile of the normal images' scores.  Crude (it only suits aligned objects), but it
shows the whole contract: a :class:`fader_kit.Masker` subclass with ``score_map`` (and here a
``fit``) and one hook that registers it.  Nothing else is needed: ``info`` comes from the
registration (name ``mean_diff``, weights ``none``), ``fit`` may take just the images (fader-kit
passes ``seed`` / ``progress`` only to a ``fit`` that names them), and the factory -- the class
itself -- gets only the options its ``__init__`` names.  Installed with ``pip install .``, it
appears in ``fader-kit maskers`` and runs with ``fader-kit evaluate --masker mean_diff``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import Masker, check_images


class MeanDiffMasker(Masker):
    def __init__(self, quantile: float = 0.99) -> None:
        self.quantile = quantile
        self.mean: Tensor | None = None

    def fit(self, images: Tensor) -> None:
        self.mean = check_images(images).mean(dim=0, keepdim=True)
        scores = self.score_map(images)
        sample = scores.flatten()[:: max(1, scores.numel() // 1_000_000)]  # torch.quantile size limit
        self.threshold = float(torch.quantile(sample.double(), self.quantile))

    def score_map(self, images: Tensor) -> Tensor:
        if self.mean is None:
            raise RuntimeError("mean_diff is not fitted: call fit() on normal images first")
        mean = F.interpolate(self.mean.to(images.device), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (check_images(images) - mean).abs().mean(dim=1, keepdim=True)

    # The mean is a plain tensor, not an nn.Module, so it is saved explicitly.
    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "mean": self.mean, "quantile": self.quantile}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.mean, self.quantile = state["threshold"], state["mean"], state["quantile"]


@hookimpl
def register_maskers(register) -> None:
    register("mean_diff", MeanDiffMasker, summary="distance to the mean normal image (example plugin)", weights="none")
