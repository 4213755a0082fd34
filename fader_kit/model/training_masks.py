"""What a training batch is masked and pasted with: M_B united with random blobs, and FADeR's pseudo-anomalies."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.model.config import TrainConfig


def random_blobs(n: int, size: tuple[int, int], coverage: float, generator: torch.Generator) -> Tensor:
    """Smooth random blob masks ``[n, 1, H, W]`` (bool), each covering about ``coverage``.

    Low-resolution noise upsampled bilinearly and thresholded at a per-image quantile gives
    irregular, connected shapes -- closer to real defects than rectangles.
    """
    h, w = size
    cells = int(torch.randint(3, 9, (1,), generator=generator))
    noise = torch.rand(n, 1, cells, cells, generator=generator)
    smooth = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    frac = coverage * (0.5 + torch.rand(n, generator=generator))  # vary the amount per image
    q = torch.stack([torch.quantile(smooth[i].flatten(), 1 - float(frac[i])) for i in range(n)])
    return smooth > q.view(n, 1, 1, 1)


def paste_pseudo_anomalies(
    images: Tensor, probability: float, area: float, generator: torch.Generator, source: str = "image"
) -> tuple[Tensor, Tensor]:
    """Pseudo-anomalies for FADeR training: with ``probability`` per image, a square of ~``area`` of
    the image pasted at a random place: cut from *another* image of the batch (rolled by one; the
    image itself when the batch has one) and colour-shifted (``source="image"``), or a procedurally
    generated texture or shape (``"procedural"``, :func:`fader_kit.data.procedural.general_images`).
    Returns the pasted images and the pasted region ``[B, 1, H, W]`` (bool).  The region is
    deliberately *not* added to M_B: the head must learn that an unseen pattern the binary mask
    missed reconstructs badly."""
    if source not in ("image", "procedural"):
        raise ValueError(f"unknown pseudo-anomaly source {source!r}; use 'image' or 'procedural'")
    b, c, h, w = images.shape
    side_h = max(1, min(h - 1, round(h * area**0.5)))
    side_w = max(1, min(w - 1, round(w * area**0.5)))
    if source == "procedural":
        from fader_kit.data.procedural import general_images

        side = max(side_h, side_w, 8)
        donor_patches = general_images(b, side, generator)[:, :c, :side_h, :side_w].to(images)
    out = images.clone()
    region = torch.zeros(b, 1, h, w, dtype=torch.bool, device=images.device)
    donors = torch.roll(torch.arange(b), 1) if b > 1 else torch.zeros(1, dtype=torch.long)
    for i in range(b):
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        sy = int(torch.randint(0, h - side_h + 1, (1,), generator=generator))
        sx = int(torch.randint(0, w - side_w + 1, (1,), generator=generator))
        ty = int(torch.randint(0, h - side_h + 1, (1,), generator=generator))
        tx = int(torch.randint(0, w - side_w + 1, (1,), generator=generator))
        shift = (torch.rand(c, 1, 1, generator=generator) - 0.5).to(images) * 0.6
        if source == "procedural":
            patch, shift = donor_patches[i], torch.zeros_like(shift)
        else:
            patch = images[int(donors[i]), :, sy : sy + side_h, sx : sx + side_w]
        out[i, :, ty : ty + side_h, tx : tx + side_w] = (patch + shift).clamp(0.0, 1.0)
        region[i, :, ty : ty + side_h, tx : tx + side_w] = True
    return out, region


def training_masks(
    masks: Tensor | None, idx: Tensor, shape: tuple[int, ...], config: TrainConfig, generator: torch.Generator
) -> Tensor:
    """M_B for a batch: the masker's masks for these images united with random blobs."""
    b, _, h, w = shape
    out = torch.zeros(b, 1, h, w, dtype=torch.bool)
    if masks is not None:
        out |= masks[idx].bool()
    if config.random_blobs:
        out |= random_blobs(b, (h, w), config.blob_coverage, generator)
    return out
