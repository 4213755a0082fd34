"""Anomaly maps from a reconstruction: multi-scale gradient magnitude similarity (RIAD).

GMS compares local gradient magnitudes of the input and its reconstruction; a reconstruction
that repaired a defect differs there in structure, not only in intensity, which is what makes
MSGMS more robust than a plain L2 map.  Settled as in DESIGN: Prewitt kernels divided by 3,
c = 0.0026, 3 scales made by 2x2 average pooling, each GMS map bilinearly upsampled, map = mean
over scales and channels of 1 - GMS, 21 x 21 mean filter, image score = max of the map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GMS_C = 0.0026


def _prewitt(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The Prewitt kernels / 3 as conv2d weights ``[2, 1, 3, 3]`` (x then y): the definition that
    :func:`gradient_magnitude` computes by shifted sums (kept as the reference of its tests)."""
    gx = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]], device=device, dtype=dtype) / 3.0
    return torch.stack([gx, gx.t()]).unsqueeze(1)  # [2, 1, 3, 3]


def gradient_magnitude(x: Tensor) -> Tensor:
    """Per-channel Prewitt gradient magnitude, zero padding, same size as ``x``.

    The 3 x 3 Prewitt kernel is a column sum then a row difference (and the transpose), so it is
    computed with shifted slices: a one-channel convolution runs far below the convolution
    kernels' speed on CPU (measured: 4.9x slower on a [16, 3, 128, 128] batch) and forces layout
    reorders in onnxruntime.  Equal to the convolution up to float rounding (~1e-7)."""
    p = F.pad(x, (1, 1, 1, 1))
    cols = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]  # [.., H, W+2]: vertical 3-sums
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]  # [.., H+2, W]: horizontal 3-sums
    gx = (cols[..., :-2] - cols[..., 2:]) / 3.0
    gy = (rows[..., :-2, :] - rows[..., 2:, :]) / 3.0
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def gms_map(a: Tensor, b: Tensor, c: float = GMS_C) -> Tensor:
    """Gradient magnitude similarity per pixel and channel, in (0, 1]; 1 = identical structure."""
    ga, gb = gradient_magnitude(a), gradient_magnitude(b)
    return (2 * ga * gb + c) / (ga * ga + gb * gb + c)


def msgms_map(a: Tensor, b: Tensor, scales: int = 3, c: float = GMS_C) -> Tensor:
    """Multi-scale ``1 - GMS`` map ``[B, 1, H, W]``: mean over scales and channels."""
    if a.shape != b.shape:
        raise ValueError(f"msgms_map needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    size = a.shape[-2:]
    total = torch.zeros(a.shape[0], 1, *size, device=a.device, dtype=a.dtype)
    for s in range(scales):
        if s > 0:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        dis = 1.0 - gms_map(a, b, c).mean(dim=1, keepdim=True)
        if s > 0:
            dis = F.interpolate(dis, size=size, mode="bilinear", align_corners=False)
        total = total + dis
    return total / scales


def msgms_loss(a: Tensor, b: Tensor, scales: int = 3) -> Tensor:
    """Mean MSGMS dissimilarity: the training loss term of RIAD."""
    return msgms_map(a, b, scales).mean()


def mean_smooth(maps: Tensor, kernel_size: int = 21) -> Tensor:
    """k x k mean filter (replicate padding keeps the border values unbiased).

    Computed as running sums (a cumulative sum along each axis, differenced k apart): a constant
    cost per pixel whatever k, 3x faster than two separable mean pools at k = 21 on CPU.  The sums
    run in float64 where the device has it, so they round no worse than the pools (~1e-8)."""
    if kernel_size <= 1:
        return maps
    k, pad = kernel_size, kernel_size // 2
    acc = torch.float64 if maps.device.type in ("cpu", "cuda") else maps.dtype
    x = F.pad(maps, (pad, pad, pad, pad), mode="replicate").to(acc)
    c = F.pad(x.cumsum(-2), (0, 0, 1, 0))
    x = c[..., k:, :] - c[..., :-k, :]
    c = F.pad(x.cumsum(-1), (1, 0))
    return ((c[..., k:] - c[..., :-k]) / (k * k)).to(maps.dtype)


def anomaly_map(images: Tensor, reconstruction: Tensor, kernel_size: int = 21) -> Tensor:
    """The RIAD anomaly map: smoothed MSGMS between input and reconstruction."""
    return mean_smooth(msgms_map(images, reconstruction), kernel_size)


def image_score(maps: Tensor) -> Tensor:
    """Image-level anomaly score: the maximum of the (smoothed) map, ``[B]``."""
    return maps.flatten(1).amax(dim=1)
