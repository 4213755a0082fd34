"""``mean_diff``: an example third-party masker for fader-kit.

The score of a pixel is its colour distance to the mean normal image; the mask keeps what lies
above a quantile of the normal images' scores.  Crude (it only suits aligned objects), but it
shows everything a plugin needs: a :class:`fader_kit.Masker` subclass and one hook that
registers its factory.  Installed with ``pip install .``, it appears in ``fader-kit maskers``
and runs with ``fader-kit evaluate --masker mean_diff``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.hookspecs import hookimpl
from fader_kit.interfaces import Masker, MaskerInfo, check_images


class MeanDiffMasker(Masker):
    def __init__(self, quantile: float = 0.99, **_cli_options: object) -> None:
        # The CLI passes weights= / allow_random_weights= / device= to every masker: no weights here.
        self.quantile = quantile
        self.mean: Tensor | None = None
        self.threshold = None

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(name="mean_diff", weights="none", details={"quantile": self.quantile})

    def fit(self, images: Tensor, *, seed: int = 0, progress: bool = False) -> "MeanDiffMasker":
        self.mean = check_images(images).mean(dim=0, keepdim=True)
        scores = self.score_map(images)
        sample = scores.flatten()[:: max(1, scores.numel() // 1_000_000)]  # torch.quantile size limit
        self.threshold = float(torch.quantile(sample.double(), self.quantile))
        return self

    def score_map(self, images: Tensor) -> Tensor:
        if self.mean is None:
            raise RuntimeError("mean_diff is not fitted: call fit() on normal images first")
        mean = F.interpolate(self.mean.to(images.device), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (check_images(images) - mean).abs().mean(dim=1, keepdim=True)

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "mean": self.mean, "quantile": self.quantile}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.mean, self.quantile = state["threshold"], state["mean"], state["quantile"]


@hookimpl
def register_maskers(register) -> None:
    register("mean_diff", MeanDiffMasker, summary="distance to the mean normal image (example plugin)", weights="none")
