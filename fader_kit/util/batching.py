"""The one batching loop: consecutive slices of aligned tensors, moved to a device."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def device_batches(
    images: Tensor, *others: Tensor, batch_size: int, device: torch.device | str, progress: bool = False,
    desc: str = "",
) -> Iterator[tuple[Tensor, ...]]:
    """``images`` (and tensors aligned with them) in consecutive batches on ``device`` (a tqdm bar
    when ``progress``)."""
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(range(0, images.shape[0], batch_size), desc=desc, leave=False)
    else:
        starts = range(0, images.shape[0], batch_size)
    for i in starts:
        yield tuple(t[i : i + batch_size].to(device) for t in (images, *others))


def map_batches(fn, images: Tensor, *others: Tensor, batch_size: int, device: torch.device | str,
                progress: bool = False, desc: str = "") -> Tensor:
    """``fn`` over batches of ``images`` (and aligned tensors), results concatenated on the CPU."""
    return torch.cat([fn(*batch).cpu() for batch in device_batches(
        images, *others, batch_size=batch_size, device=device, progress=progress, desc=desc)])
