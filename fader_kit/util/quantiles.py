"""Quantiles of many values (every pixel of every normal image), with no size limit.

``torch.quantile`` refuses inputs of more than 2**24 elements; subsampling around that limit gave
each caller its own approximation.  :func:`quantiles` computes in the dtype it is given (pass a
double tensor for float64) with ``torch.quantile`` up to that limit, and with numpy's partition in
float64 beyond it (the same numbers as ``torch.quantile`` of a double tensor), never on a sample.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

TORCH_QUANTILE_LIMIT = 2**24


def quantiles(values: Tensor, qs: Sequence[float], *, what: str = "quantiles") -> list[float]:
    """The ``qs`` quantiles (linear interpolation) of every value in ``values``; a ValueError naming
    ``what`` when there are fewer than two values or any is not finite."""
    flat = values.detach().flatten().cpu()
    if not flat.is_floating_point():
        flat = flat.double()
    if flat.numel() < 2:
        raise ValueError(f"{what} needs at least 2 values of normal images, got {flat.numel()}")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{what}: the normal values hold NaN or infinite values")
    if flat.numel() <= TORCH_QUANTILE_LIMIT:
        return [float(v) for v in torch.quantile(flat, torch.tensor(list(qs), dtype=flat.dtype))]
    return [float(v) for v in np.quantile(flat.double().numpy(), list(qs))]
