"""Visual defect obfuscation with a mosaic hint (EAR, paper Fig. 2b).

``I' = I * (1 - M_B) + mosaic(I, m) * M_B``: masked pixels are replaced by the m x m block
average of the image, which hides the defect's detail but hints at its colour so the U-Net can
inpaint a plausible normal pattern.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fader_kit.maskers.interfaces import check_images


def mosaic(images: Tensor, m: int) -> Tensor:
    """m x m average pooling followed by nearest upsampling back to the input size."""
    check_images(images)
    if m < 1:
        raise ValueError(f"mosaic scale m must be >= 1, got {m}")
    h, w = images.shape[-2:]
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} is not divisible by the mosaic scale m={m}")
    if m == 1:
        return images
    pooled = F.avg_pool2d(images, kernel_size=m, stride=m)
    return F.interpolate(pooled, scale_factor=m, mode="nearest")


def obfuscate(images: Tensor, mask: Tensor, m: int) -> Tensor:
    """Replace the pixels where ``mask`` is True by the mosaic of the image (Fig. 2b)."""
    check_images(images)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"mask must have shape [B, 1, H, W] matching images {list(images.shape)}, got {list(mask.shape)}"
        )
    weight = mask.to(images.dtype)
    return images * (1 - weight) + mosaic(images, m) * weight
