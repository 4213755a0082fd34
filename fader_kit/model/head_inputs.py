"""What the FADeR head reads per patch: input strategies.

A head input turns the obfuscated image I' (and, where it needs them, the frozen encoder's features
or the masker's score map) into one token per m x m patch, ``[B, N, D]``, row-major over the patch
grid.  :attr:`~fader_kit.model.config.FaderConfig.head_input` names one or more registered strategies; their
tokens are concatenated in that order (:class:`HeadInputs`).  The core registers the paper's
``pixels`` and ``encoder``; a plugin registers more (docs/writing-a-head.md).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fader_kit.model.config import FaderConfig
from fader_kit.errors import ConfigError


class HeadHost(Protocol):
    """What a strategy may read of the model it serves (a :class:`~fader_kit.model.fader.FaderModel`)."""

    config: FaderConfig
    reconstructor: Any
    masker: Any

    @property
    def patch_size(self) -> int: ...

    def head_prediction(self, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        """The learned head's l_hat ``[B, N]`` for the patches of ``obfuscated``."""
        ...


def patchify(images: Tensor, m: int) -> Tensor:
    """Non-overlapping m x m patches as tokens ``[B, N, 3*m*m]``, row-major over the patch grid."""
    h, w = images.shape[-2:]
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
    return F.unfold(images, kernel_size=m, stride=m).transpose(1, 2)


def patch_grid(images: Tensor, m: int) -> tuple[int, int]:
    """The patch grid ``(H / m, W / m)`` of ``images``."""
    return images.shape[-2] // m, images.shape[-1] // m


def encoder_level(patch_size: int, depth: int) -> int:
    """Index of the encoder feature whose resolution is the patch grid's (feature i is H / 2^(i+1)):
    log2(m) - 1, clamped to the encoder's depth."""
    return min(max(int(round(math.log2(patch_size))) - 1, 0), depth - 1)


def encoder_tokens(feats: list[Tensor], m: int, grid: tuple[int, int]) -> Tensor:
    """The frozen encoder's feature at each patch, ``[B, N, C]``: feature ``encoder_level(m)`` pooled
    (mean) or repeated onto the patch grid, detached (the encoder is frozen during FADeR training)."""
    f = feats[encoder_level(m, len(feats))].detach().float()
    if tuple(f.shape[-2:]) != grid:
        f = (F.adaptive_avg_pool2d(f, grid) if f.shape[-2] >= grid[0]
             else F.interpolate(f, size=grid, mode="nearest"))
    return f.flatten(2).transpose(1, 2)


class HeadInput:
    """One input strategy.  Subclasses set the class attributes and implement :meth:`dim` and
    :meth:`tokens`; the registry builds one per head as ``Strategy(config)``.

    ``standardised``: the head standardises a token that holds this input (mean and std of the normal
    training patches, :meth:`~fader_kit.model.fader.FaderModel.fit_input_norm`); raw pixels are not.
    ``reads_scores``: the tokens need the masker's score map (the model then asks for ``scores=``).
    ``module_name``: the attribute under which :meth:`module`'s frozen network is kept on the model
    (saved with it), or None."""

    name: ClassVar[str] = ""
    standardised: ClassVar[bool] = True
    reads_scores: ClassVar[bool] = False
    module_name: ClassVar[str | None] = None

    def __init__(self, config: FaderConfig) -> None:
        self.config = config

    def module(self, pretrained: bool) -> nn.Module | None:
        """A frozen network this input reads through (built before the head, saved with the model);
        ``pretrained=False`` builds the architecture alone, for a checkpoint that brings the weights."""
        return None

    def dim(self, host: HeadHost) -> int:
        raise NotImplementedError

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        raise NotImplementedError


class PixelsInput(HeadInput):
    """The paper: the m x m patch's raw pixels, 3 m^2 numbers."""

    name = "pixels"
    standardised = False

    def dim(self, host: HeadHost) -> int:
        return 3 * self.config.patch_size ** 2

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        return patchify(obfuscated, self.config.patch_size)


class EncoderInput(HeadInput):
    """The frozen U-Net encoder's feature map at the patch grid's resolution (pooled to the grid);
    ``feats`` (the encoder's features of I', from the forward pass) saves a second encoder pass."""

    name = "encoder"

    def dim(self, host: HeadHost) -> int:
        widths = getattr(getattr(host.reconstructor, "config", None), "widths", None)
        if widths is None:
            raise ConfigError("head_input 'encoder' needs an EARUNet reconstructor (its config.widths give the "
                              "encoder's channels)")
        return int(widths[encoder_level(self.config.patch_size, len(widths))])

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        if feats is None:
            with torch.no_grad():
                feats = host.reconstructor.encode(obfuscated)
        return encoder_tokens(feats, self.config.patch_size, patch_grid(obfuscated, self.config.patch_size))


class HeadInputs:
    """The head's input strategies together: their tokens concatenated in configuration order."""

    def __init__(self, parts: list[HeadInput]) -> None:
        self.parts = parts

    @property
    def standardised(self) -> bool:
        return any(p.standardised for p in self.parts)

    @property
    def reads_scores(self) -> bool:
        return any(p.reads_scores for p in self.parts)

    def dim(self, host: HeadHost) -> int:
        return sum(p.dim(host) for p in self.parts)

    def tokens(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None = None,
               scores: Tensor | None = None) -> Tensor:
        out = [p.tokens(host, obfuscated, feats, scores) for p in self.parts]
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


#: the core's input strategies, registered by fader_kit.model.variants
CORE_INPUTS: tuple[type[HeadInput], ...] = (PixelsInput, EncoderInput)
