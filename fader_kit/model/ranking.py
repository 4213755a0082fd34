"""The head's training signal: the ground truth l of Eq. 1, the ranking loss of Eq. 3, and which
patches take part in it.  Pure tensor functions; :mod:`fader_kit.model.training` and
:mod:`fader_kit.model.fader` both build on them (so neither needs the other at import time)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_errors(images: Tensor, reconstruction: Tensor, m: int) -> Tensor:
    """Ground truth l_i of Eq. 1: mean squared error per m x m patch, ``[B, N]``."""
    err = ((images - reconstruction) ** 2).mean(dim=1, keepdim=True)
    return F.avg_pool2d(err, m).flatten(1)


def ranking_loss(
    pred: Tensor, target: Tensor, margin: float, pairs: int | None = None, generator: torch.Generator | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Eq. 3 over pairs (i, j) of patches of the same image, averaged.

    ``max(0, -sign(l_i - l_j) * (l_hat_i - l_hat_j) + xi)`` with sign = +1 if l_i > l_j else -1.
    ``pairs=None`` uses every unordered pair i < j; an int samples that many pairs per image
    (``generator`` makes the sample reproducible), which keeps large grids affordable.
    ``valid`` (``[B, N]`` bool) keeps only the pairs whose two patches are both valid (the
    ``focus="unmasked"`` head: patches without an M_B pixel); the mean is over the kept pairs.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be [B, N], got {list(pred.shape)} and {list(target.shape)}")
    b, n = pred.shape
    if n < 2:
        raise ValueError("ranking loss needs at least two patches per image")
    if pairs is None:
        i, j = torch.triu_indices(n, n, offset=1, device=pred.device)
        i, j = i.expand(b, -1), j.expand(b, -1)
    else:
        i = torch.randint(0, n, (b, pairs), generator=generator, device="cpu").to(pred.device)
        j = (i + torch.randint(1, n, (b, pairs), generator=generator, device="cpu").to(pred.device)) % n
    li, lj = target.gather(1, i), target.gather(1, j)
    pi, pj = pred.gather(1, i), pred.gather(1, j)
    sign = torch.where(li > lj, 1.0, -1.0).to(pred.dtype)
    loss = F.relu(-sign * (pi - pj) + margin)
    if valid is None:
        return loss.mean()
    if valid.shape != pred.shape:
        raise ValueError(f"valid must be [B, N] like pred, got {list(valid.shape)} for {list(pred.shape)}")
    keep = (valid.gather(1, i) & valid.gather(1, j)).to(loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp(min=1.0)


def unmasked_patches(binary_mask: Tensor, m: int) -> Tensor:
    """``[B, N]`` bool: True for the m x m patches (row-major, as :func:`patchify`) with no M_B pixel --
    the patches whose skip features carry the image itself rather than its mosaic."""
    return F.max_pool2d(binary_mask.float(), m).flatten(1) == 0
