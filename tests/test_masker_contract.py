"""A masker that breaks the contract (wrong shape of its mask or score map) gets one error that
names it, before anything downstream fails deep inside torch."""
from __future__ import annotations

import pytest
import torch

from fader_kit.maskers.interfaces import Masker, MaskerContractError, MaskerInfo
from fader_kit.model.pipeline import compute_masks, masker_score_maps


class Flat(Masker):
    """Returns its score map without the channel axis: [B, H, W] instead of [B, 1, H, W]."""

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(name="flat_scores", weights="none")

    def score_map(self, images):
        return images.mean(dim=1)

    def mask(self, images):
        return self.score_map(images) > 0.5


def test_a_wrong_score_map_shape_names_the_masker():
    with pytest.raises(MaskerContractError, match=r"masker 'flat_scores' returned a score map of shape \[2, 16, 16\]"):
        masker_score_maps(Flat(), torch.rand(2, 3, 16, 16))


def test_a_wrong_mask_shape_names_the_masker():
    with pytest.raises(MaskerContractError, match=r"masker 'flat_scores' returned a mask of shape \[2, 16, 16\].*\[B, 1, H, W\]"):
        compute_masks(Flat(), torch.rand(2, 3, 16, 16))
