"""Wall-clock timing that survives a noisy machine: warm-up, synchronisation, interleaving, median.

Two models compared as a ratio (FADeR vs plain EAR) are timed in alternation, so a burst of
load from elsewhere hits both alike instead of biasing one.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

from fader_kit.util.timing import time_call


@torch.no_grad()
def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 2, repeats: int = 10
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin ``repeats`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_call(fn, device))
    return {k: statistics.median(v) for k, v in samples.items()}
