"""Seeded splits of a set of images: the same seed and sizes give the same split on every machine."""
from __future__ import annotations

import torch


def seeded_split(n: int, held: int, seed: int) -> tuple[list[int], list[int]]:
    """``(kept, held_out)`` sorted indices of ``n`` items, ``held`` of them drawn by a seeded permutation.

    One draw serves every hold-out (the detector's calibration images, the selector's pseudo-defect
    images), so a split is reproducible from its seed alone."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(order[held:]), sorted(order[:held])
