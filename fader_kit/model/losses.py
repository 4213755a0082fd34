"""RIAD's reconstruction objective (L2 + SSIM + MSGMS), what the EAR U-Net and FADeR's decoder fine-tune learn."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.model.scoring import msgms_loss


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity (Gaussian window, data range 1), as in RIAD's loss.

    The five local means (of a, b, a^2, b^2, ab) come from one grouped convolution over the five
    stacked inputs: depthwise 11 x 11 convolutions are slow on CPU and one call with 5x the channels
    costs about what one call with 1x does (a training step at batch 8 spends a third of the time in
    SSIM otherwise).  Each output channel is computed as a convolution of its own, so the values are
    those of five separate calls bit for bit; ``a`` enters through an identity product created before
    ``a * a`` and ``a * b`` so that autograd also adds the three gradient contributions reaching
    ``a`` in the order five separate calls would (``tests/test_training.py`` pins both)."""
    c = a.shape[1]
    w = _gaussian_window(window, sigma, 5 * c, a.device, a.dtype)
    pad = window // 2
    stacked = torch.cat([a * 1.0, b, a * a, b * b, a * b], dim=1)
    mu_a, mu_b, e_aa, e_bb, e_ab = F.conv2d(stacked, w, padding=pad, groups=5 * c).split(c, dim=1)
    saa = e_aa - mu_a**2
    sbb = e_bb - mu_b**2
    sab = e_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


def reconstruction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """RIAD's objective: L2 + (1 - SSIM) + MSGMS."""
    return F.mse_loss(pred, target) + (1 - ssim(pred, target)) + msgms_loss(pred, target)
