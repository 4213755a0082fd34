"""Constructed images with pasted defects, shared by the trained-masker tests."""
from __future__ import annotations

import torch


def stripes_with_defects(
    n: int, size: int, seed: int, defect: bool, kind: str = "flat"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal images: noisy diagonal stripes; a defect is a pasted 1/4-size square, ``flat`` (the
    stripes wiped out: mean colour, no noise) or ``red``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.25 * torch.sin((xx + yy)[None] * 0.4 + phase)
    images = (base[:, None].repeat(1, 3, 1, 1) * torch.tensor([0.9, 0.8, 0.6]).view(1, 3, 1, 1)
              + 0.03 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    if defect:
        side = size // 4
        for i in range(n):
            y, x = torch.randint(2, size - side - 2, (2,), generator=g).tolist()
            patch = images[i, :, y : y + side, x : x + side]
            if kind == "flat":
                patch[:] = images[i].mean((1, 2)).view(3, 1, 1)
            elif kind == "blend":
                patch[:] = 0.5 * patch + 0.5 * torch.tensor([0.2, 0.4, 0.9]).view(3, 1, 1)
            else:
                patch[:] = torch.tensor([0.95, 0.1, 0.1]).view(3, 1, 1)
            masks[i, :, y : y + side, x : x + side] = True
    return images, masks
