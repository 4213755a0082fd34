"""Quantiles of many values (every pixel of every normal image): numpy's partition has no size
limit, unlike ``torch.quantile`` (2**24 elements), so no subsample is needed."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor


def normal_values(values: Tensor, *, what: str, at_least: int = 2) -> np.ndarray:
    """``values`` flattened to a finite float array, or a ValueError naming ``what``."""
    flat = values.detach().float().flatten().cpu().numpy()
    if flat.size < at_least:
        raise ValueError(f"{what} needs at least {at_least} values of normal images, got {flat.size}")
    if not np.isfinite(flat).all():
        raise ValueError(f"{what}: the normal values hold NaN or infinite values")
    return flat


def quantiles(values: Tensor, qs: Sequence[float], *, what: str = "quantiles") -> list[float]:
    """The ``qs`` quantiles (linear interpolation) of every value in ``values``."""
    flat = normal_values(values, what=what)
    return [float(v) for v in np.quantile(flat, list(qs))]
