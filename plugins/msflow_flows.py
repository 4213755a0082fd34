"""The networks of ``msflow``: conditional affine couplings per scale, the cross-scale fusion flow,
and the likelihood maps they give (see :mod:`fader_kit_plugins.msflow` for the method and sources).

Everything here traces to ONNX at a fixed image size: shapes are read as Python ints and the
adaptive pooling of the fusion subnet is a plain (or matrix) average pooling.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def positional_encoding_2d(channels: int, height: int, width: int) -> Tensor:
    """Sinusoidal encoding ``[channels, H, W]``: half the channels encode x, half encode y."""
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    pos_w = torch.arange(width, dtype=torch.float32)[:, None] * freq  # [W, half/2]
    pos_h = torch.arange(height, dtype=torch.float32)[:, None] * freq
    pe = torch.zeros(channels, height, width)
    pe[0:half:2] = torch.sin(pos_w).t()[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(pos_w).t()[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(pos_h).t()[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(pos_h).t()[:, :, None].expand(-1, -1, width)
    return pe


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_ln_subnet(c_in: int, c_out: int) -> nn.Module:
    """MSFlow's coupling subnet: conv3x3 - LayerNorm - ReLU - conv3x3 (hidden width = c_in)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1), ChannelLayerNorm(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1)
    )


class AffineCouplingBlock(nn.Module):
    """One invertible block: affine coupling, then global affine, then a fixed channel permutation.

    Forward, with ``x = [x1, x2]`` split along channels (x1 has the extra channel when odd):
    ``a = 0.1 * subnet([x1, cond])``, ``s = clamp * tanh(a_s)``, ``x2' = x2 * exp(s) + a_t``;
    ``y = P (g * [x1, x2'] + b)`` with ``g = 0.1 * softplus_{beta=0.5}(gamma)`` (1 at init).
    ``log|det J| = sum s + H W sum log g``.  ``subnet`` may be given (tests set exact weights).
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int = 0,
        *,
        clamp: float = 1.9,
        subnet: nn.Module | None = None,
        permutation: Tensor | None = None,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"coupling needs at least 2 channels, got {channels}")
        self.split = (channels - channels // 2, channels // 2)
        self.clamp = clamp
        self.subnet = subnet if subnet is not None else conv_ln_subnet(self.split[0] + cond_channels, 2 * self.split[1])
        init = 2.0 * math.log(math.exp(0.5 * 10.0) - 1.0)  # softplus_{0.5}(init) * 0.1 == 1
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), init))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        perm = permutation if permutation is not None else torch.randperm(channels)
        self.register_buffer("perm", perm.long().clone())
        self.register_buffer("inv_perm", torch.argsort(perm.long()))

    def _scale(self) -> Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def _coefficients(self, x1: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x1 if cond is None else torch.cat([x1, cond], 1)
        a = 0.1 * self.subnet(h)
        s = self.clamp * torch.tanh(a[:, : self.split[1]])
        return s, a[:, self.split[1] :]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = torch.split(x, self.split, dim=1)
        s, t = self._coefficients(x1, cond)
        y = torch.cat([x1, x2 * torch.exp(s) + t], 1)
        g = self._scale()
        y = (y * g + self.global_offset)[:, self.perm]
        logdet = s.flatten(1).sum(1) + x.shape[2] * x.shape[3] * torch.log(g).sum()
        return y, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y = (y[:, self.inv_perm] - self.global_offset) / self._scale()
        x1, y2 = torch.split(y, self.split, dim=1)
        s, t = self._coefficients(x1, cond)
        return torch.cat([x1, (y2 - t) * torch.exp(-s)], 1)


class ParallelFlow(nn.Module):
    """The flow of one scale: a sequence of conditional coupling blocks."""

    def __init__(self, channels: int, cond_channels: int, n_blocks: int, clamp: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AffineCouplingBlock(channels, cond_channels, clamp=clamp) for _ in range(n_blocks)
        )

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, ld = block(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor) -> Tensor:
        for block in reversed(self.blocks):
            z = block.inverse(z, cond)
        return z


def average_pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of ``[B, C, H, W]`` to ``size`` in operations that trace to ONNX with
    the sizes fixed: a plain average pooling when ``size`` divides the map, else the pooling
    matrices (``A_h x A_w^T``, each row the mean over ``adaptive_avg_pool2d``'s window)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))

    def matrix(n_in: int, n_out: int) -> Tensor:
        m = torch.zeros(n_out, n_in, dtype=x.dtype, device=x.device)
        for i in range(n_out):
            start, stop = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, start:stop] = 1.0 / (stop - start)
        return m

    return matrix(h, size[0]) @ x @ matrix(w, size[1]).t()


class FusionSubnet(nn.Module):
    """Cross-scale coefficient net: pool every scale to the coarsest, mix, upsample, add back,
    then per-scale 3x3 convs give the log-scale ``s`` and shift ``t`` (each ``out_channels[l]``)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        total = sum(in_channels)
        mid = max(total // 4, 1)
        self.in_channels = list(in_channels)
        self.mix = nn.Sequential(
            nn.Conv2d(total, mid, 3, padding=1), ChannelLayerNorm(mid), nn.ReLU(),
            nn.Conv2d(mid, total, 3, padding=1), nn.ReLU(),
        )
        self.conv_s = nn.ModuleList(nn.Conv2d(c, o, 3, padding=1) for c, o in zip(in_channels, out_channels))
        self.conv_t = nn.ModuleList(nn.Conv2d(c, o, 3, padding=1) for c, o in zip(in_channels, out_channels))

    def forward(self, xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        coarse = (int(xs[-1].shape[-2]), int(xs[-1].shape[-1]))
        mixed = self.mix(torch.cat([average_pool_to(x, coarse) for x in xs], 1))
        parts = torch.split(mixed, self.in_channels, dim=1)
        out = []
        for x, p, cs, ct in zip(xs, parts, self.conv_s, self.conv_t):
            h = x + F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=True)
            out.append((cs(h), ct(h)))
        return out


class FusionFlow(nn.Module):
    """Fixed permutation per scale, then a two-step coupling across scales (atan soft clamp)."""

    def __init__(self, channels: Sequence[int], clamp: float) -> None:
        super().__init__()
        self.clamp = clamp
        self.splits = [(c // 2, c - c // 2) for c in channels]
        first = [a for a, _ in self.splits]
        second = [b for _, b in self.splits]
        self.net_second = FusionSubnet(second, first)  # reads the second halves, updates the first
        self.net_first = FusionSubnet(first, second)
        for i, c in enumerate(channels):
            perm = torch.randperm(c)
            self.register_buffer(f"perm{i}", perm)
            self.register_buffer(f"inv_perm{i}", torch.argsort(perm))

    def _log_e(self, s: Tensor) -> Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        xs = [x[:, getattr(self, f"perm{i}")] for i, x in enumerate(xs)]
        halves = [torch.split(x, sp, dim=1) for x, sp in zip(xs, self.splits)]
        firsts, seconds = [h[0] for h in halves], [h[1] for h in halves]
        logdet = xs[0].new_zeros(xs[0].shape[0])
        new_first = []
        for a, (s, t) in zip(firsts, self.net_second(seconds)):
            ls = self._log_e(s)
            new_first.append(a * torch.exp(ls) + t)
            logdet = logdet + ls.flatten(1).sum(1)
        new_second = []
        for b, (s, t) in zip(seconds, self.net_first(new_first)):
            ls = self._log_e(s)
            new_second.append(b * torch.exp(ls) + t)
            logdet = logdet + ls.flatten(1).sum(1)
        return [torch.cat([a, b], 1) for a, b in zip(new_first, new_second)], logdet

    def inverse(self, zs: list[Tensor]) -> list[Tensor]:
        halves = [torch.split(z, sp, dim=1) for z, sp in zip(zs, self.splits)]
        firsts, seconds = [h[0] for h in halves], [h[1] for h in halves]
        old_second = [(b - t) * torch.exp(-self._log_e(s)) for b, (s, t) in zip(seconds, self.net_first(firsts))]
        old_first = [(a - t) * torch.exp(-self._log_e(s)) for a, (s, t) in zip(firsts, self.net_second(old_second))]
        xs = [torch.cat([a, b], 1) for a, b in zip(old_first, old_second)]
        return [x[:, getattr(self, f"inv_perm{i}")] for i, x in enumerate(xs)]


class MSFlowNet(nn.Module):
    """Parallel flows + fusion flow over a list of feature maps; returns latents and log|det J|."""

    def __init__(self, channels: Sequence[int], cond_channels: int, blocks: Sequence[int], clamp: float) -> None:
        super().__init__()
        self.cond_channels = cond_channels
        self.parallel = nn.ModuleList(ParallelFlow(c, cond_channels, n, clamp) for c, n in zip(channels, blocks))
        self.fusion = FusionFlow(channels, clamp)

    def _cond(self, x: Tensor) -> Tensor:
        pe = positional_encoding_2d(self.cond_channels, x.shape[2], x.shape[3]).to(x)
        return pe.unsqueeze(0).expand(x.shape[0], -1, -1, -1)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        zs, logdet = [], feats[0].new_zeros(feats[0].shape[0])
        for f, flow in zip(feats, self.parallel):
            z, ld = flow(f, self._cond(f))
            zs.append(z)
            logdet = logdet + ld
        zs, ld = self.fusion(zs)
        return zs, logdet + ld

    def inverse(self, zs: list[Tensor]) -> list[Tensor]:
        zs = self.fusion.inverse(zs)
        return [flow.inverse(z, self._cond(z)) for z, flow in zip(zs, self.parallel)]


def gaussian_log_likelihood(zs: Sequence[Tensor], logdet: Tensor) -> Tensor:
    """``log p(x) = sum log N(z; 0, I) + log|det J|`` per sample (natural log)."""
    dims = sum(z[0].numel() for z in zs)
    sq = sum(z.pow(2).flatten(1).sum(1) for z in zs)
    return -0.5 * sq - 0.5 * dims * math.log(2 * math.pi) + logdet


def nll_loss(zs: Sequence[Tensor], logdet: Tensor) -> Tensor:
    """MSFlow's training loss: ``mean_b(sum 0.5 z^2 - log|det J|)`` (the constant dropped)."""
    return (sum(0.5 * z.pow(2).flatten(1).sum(1) for z in zs) - logdet).mean()


def aggregate_log_likelihood(logps: Sequence[Tensor], size: tuple[int, int], mode: str) -> Tensor:
    """Per-scale log-likelihood maps ``[B, h_l, w_l]`` -> anomaly map ``[B, 1, H, W]`` (MSFlow)."""

    def up(m: Tensor) -> Tensor:
        return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True)

    def image_max(m: Tensor) -> Tensor:
        return m.flatten(1).max(1).values.view(-1, *([1] * (m.ndim - 1)))

    if mode == "add":
        probs = sum(up(torch.exp(lp - image_max(lp))) for lp in logps)
        return image_max(probs) - probs
    total = sum(up(lp) for lp in logps)
    if mode == "mul":
        prob = torch.exp(total - image_max(total))
        return image_max(prob) - prob
    if mode == "nll":
        return -total
    raise ValueError(f"unknown aggregation {mode!r}; choose add, mul or nll")
