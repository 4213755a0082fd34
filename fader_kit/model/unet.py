"""The EAR inpainting U-Net (paper Sec. 4.1) as a :class:`Reconstructor`.

Encoder block d: 3 x (conv3x3, BN, LeakyReLU), the third with stride 2, so feature d lives at
H / 2^d.  Decoder block d (d = D..1): concatenate its input with the encoder's feature d (for
d < D: the skip connection, optionally multiplied by FADeR's gate), then nearest upsample x2 and
3 x (conv3x3, BN, LeakyReLU).  A 1x1 output convolution maps to RGB, clamped to [0, 1].

The clamp is *straight-through*: the forward value is clamped, the gradient passes as if it were
not.  A plain clamp has zero gradient outside [0, 1], so an output pixel that overshoots during
training gets no signal back and can stay stuck at 0 or 1 (seen as 22 % of eval-mode pixels at
the clamp before this fix).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fader_kit.model.config import UNetConfig
from fader_kit.maskers.interfaces import Reconstructor


def _conv_bn_act(cin: int, cout: int, stride: int, slope: float) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(slope, inplace=True),
    ]


def straight_through_clamp(x: Tensor, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """``clamp(x, lo, hi)`` in the forward pass, identity in the backward pass."""
    return x + (x.clamp(lo, hi) - x).detach()


class EncoderBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, slope: float) -> None:
        super().__init__(
            *_conv_bn_act(cin, cout, 1, slope),
            *_conv_bn_act(cout, cout, 1, slope),
            *_conv_bn_act(cout, cout, 2, slope),
        )


class DecoderBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, slope: float) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_bn_act(cin, cout, 1, slope),
            *_conv_bn_act(cout, cout, 1, slope),
            *_conv_bn_act(cout, cout, 1, slope),
        )


class EARUNet(Reconstructor):
    """U-Net with D = len(config.widths) blocks; skip connections at depths 1..D-1."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        w, s = self.config.widths, self.config.negative_slope
        d = len(w)
        self.encoder = nn.ModuleList(
            EncoderBlock(self.config.in_channels if i == 0 else w[i - 1], w[i], s) for i in range(d)
        )
        # decoder[i] is decoder block of depth i+1. Block D takes only feature D; block d < D
        # takes [output of block d+1 (width w[d-1]), skip feature d (width w[d-1])].
        blocks = []
        for i in range(d):
            if i == d - 1:
                cin = w[i]
            else:
                cin = w[i] * 2
            cout = w[i - 1] if i > 0 else w[0]
            blocks.append(DecoderBlock(cin, cout, s))
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(w[0], 3, kernel_size=1)
        if self.config.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def depth(self) -> int:
        return len(self.encoder)

    def encode(self, x: Tensor) -> list[Tensor]:
        size = x.shape[-1]
        if x.shape[-2] % 2**self.depth or size % 2**self.depth:
            raise ValueError(
                f"EARUNet of depth {self.depth} needs H and W divisible by {2**self.depth}, "
                f"got {list(x.shape[-2:])}"
            )
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[Tensor], skip_gates: list[Tensor] | None = None) -> Tensor:
        d = self.depth
        if len(feats) != d:
            raise ValueError(f"decode expects {d} feature maps, got {len(feats)}")
        if skip_gates is not None and len(skip_gates) != d - 1:
            raise ValueError(f"skip_gates must hold D-1 = {d - 1} gates, got {len(skip_gates)}")
        x = self.decoder[d - 1](feats[d - 1])
        for i in range(d - 2, -1, -1):
            skip = feats[i]
            if skip_gates is not None:
                skip = skip * skip_gates[i]
            x = self.decoder[i](torch.cat([x, skip], dim=1))
        return straight_through_clamp(self.head(x))

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def skip_shapes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size of the skip feature at depths 1..D-1 for an input of ``image_size``."""
        h, w = image_size
        return [(h // 2 ** (i + 1), w // 2 ** (i + 1)) for i in range(self.depth - 1)]
