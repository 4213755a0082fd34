"""``patch_stats``: a weight-free masker from the statistics of normal patches.

Each m x m patch is described by its pixels average-pooled to a k x k x 3 vector.  Fitted on
normal images, the masker scores a patch by its Mahalanobis distance to the normal patches:
against the mean *at its position* for aligned objects (a bottle's neck always sits in the same
place), or against one pooled mean for textures (any position looks alike).  ``mode="auto"``
picks by how much of the variance the per-position means explain.  The covariance is pooled over
positions and shrunk towards its diagonal so a few dozen images suffice.  The binary mask is the
score above a quantile of the normal patches' scores.

It needs no pretrained weights, so it is the offline default of the CLI and the core tests.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fader_kit.data import DataError
from fader_kit.errors import ConfigError
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.util.quantiles import quantiles
from fader_kit.maskers.interfaces import Masker, MaskerInfo, check_images, check_tensor, check_threshold


class PatchStatsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_size: int = Field(8, ge=2, description="side of a scored patch in pixels")
    pooled_size: int = Field(4, ge=1, description="k: each patch is average-pooled to k x k x 3")
    mode: Literal["auto", "position", "pooled"] = "auto"
    auto_ratio: float = Field(0.5, gt=0, lt=1, description="auto picks 'position' when position means explain more than this share of variance")
    shrinkage: float = Field(0.1, ge=0, le=1, description="covariance shrinkage towards its diagonal")
    quantile: float = Field(0.99, gt=0, lt=1, description="threshold = this quantile of normal patch scores")
    calibration_fraction: float = Field(
        0.2, ge=0, lt=1,
        description="share of the normal images held out of the statistics to set the threshold "
        "(scores of the images the statistics were fitted on are biased low)",
    )


class PatchStatsMasker(Masker):
    def __init__(self, config: PatchStatsConfig | None = None, **options: Any) -> None:
        # weights / allow_random_weights / device are accepted from the CLI and ignored: no weights here.
        for key in ("weights", "allow_random_weights", "device"):
            options.pop(key, None)
        self.config = config or PatchStatsConfig(**options)
        self.mean: Tensor | None = None        # [P, D] position means, or [1, D] pooled
        self.precision: Tensor | None = None   # [D, D]
        self.grid: tuple[int, int] | None = None
        self.mode: str | None = None
        self.threshold = None

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(name="patch_stats", weights="none", details={"mode": self.mode or self.config.mode})

    def features(self, images: Tensor) -> Tensor:
        """``[B, P, D]`` patch descriptors (P patches in row-major grid order)."""
        check_images(images)
        p, k = self.config.patch_size, self.config.pooled_size
        h, w = images.shape[-2:]
        if h % p or w % p or p % k:
            raise ConfigError(f"image {h}x{w} needs to be divisible by patch_size {p}, and patch_size by pooled_size {k}")
        pooled = F.avg_pool2d(images.float(), p // k)  # [B,3,h/p*k, w/p*k]
        tokens = F.unfold(pooled, kernel_size=k, stride=k)  # [B, 3k^2, P]
        return tokens.transpose(1, 2)

    def fit(self, images: Tensor, *, seed: int = 0, progress: bool = False) -> "PatchStatsMasker":
        n_cal = int(images.shape[0] * self.config.calibration_fraction)
        if n_cal >= 2 and images.shape[0] - n_cal >= 2:
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
            fit_images, cal_images = images[order[n_cal:]], images[order[:n_cal]]
        else:  # too few images to hold some out: calibrate on the fitted ones
            fit_images, cal_images = images, images
        feats = self.features(fit_images).double()  # [N, P, D]
        n, num_p, dim = feats.shape
        if n < 2:
            raise DataError("patch_stats needs at least two normal images to fit")
        pos_mean = feats.mean(dim=0, keepdim=True)                   # [1, P, D]
        resid_pos = (feats - pos_mean).reshape(-1, dim)
        pooled_mean = feats.reshape(-1, dim).mean(dim=0, keepdim=True)
        resid_pool = feats.reshape(-1, dim) - pooled_mean
        var_pos, var_pool = resid_pos.pow(2).sum(), resid_pool.pow(2).sum()
        mode = self.config.mode
        if mode == "auto":
            mode = "position" if var_pos < self.config.auto_ratio * var_pool else "pooled"
        resid = resid_pos if mode == "position" else resid_pool
        cov = resid.t() @ resid / max(resid.shape[0] - 1, 1)
        s = self.config.shrinkage
        cov = (1 - s) * cov + s * torch.diag(torch.diag(cov)) + 1e-6 * torch.eye(dim, dtype=cov.dtype)
        self.mode = mode
        self.mean = (pos_mean[0] if mode == "position" else pooled_mean).float()
        self.precision = torch.linalg.inv(cov).float()
        self.grid = (images.shape[-2] // self.config.patch_size, images.shape[-1] // self.config.patch_size)
        normal = self._patch_scores(cal_images)
        self.threshold = quantiles(normal.double(), [self.config.quantile], what="patch_stats threshold")[0]
        return self

    def _patch_scores(self, images: Tensor) -> Tensor:
        if self.mean is None or self.precision is None:
            raise RuntimeError("patch_stats is not fitted: call fit() on normal images first")
        feats = self.features(images)
        if self.mode == "position" and feats.shape[1] != self.mean.shape[0]:
            raise ConfigError(f"patch_stats was fitted on a {self.grid} patch grid; images give {feats.shape[1]} patches")
        d = feats - self.mean.to(feats.device)
        md = torch.einsum("bpd,de,bpe->bp", d, self.precision.to(feats.device), d)
        return md.clamp_min(0).sqrt()  # [B, P]

    def score_map(self, images: Tensor) -> Tensor:
        p = self.config.patch_size
        h, w = images.shape[-2:]
        grid = self._patch_scores(images).reshape(images.shape[0], 1, h // p, w // p)
        return F.interpolate(grid, size=(h, w), mode="nearest")

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "mean": self.mean, "precision": self.precision,
                "grid": self.grid, "mode": self.mode, "config": self.config.model_dump(mode="json")}

    def check_state(self, state: dict[str, Any], image_size: int) -> None:
        """The saved statistics fit images of side ``image_size``: a ``[P, D]`` (position) or ``[1, D]``
        (pooled) float32 mean and a ``[D, D]`` precision, ``D = 3 k^2``, on the image's patch grid."""
        keys = {"threshold", "mean", "precision", "grid", "mode", "config"}
        if set(state) != keys:
            raise ValueError(f"state entries {sorted(state)}, expected {sorted(keys)}")
        if not isinstance(state["config"], dict):
            raise ValueError("state entry config must be an object")
        config = PatchStatsConfig(**state["config"])
        check_threshold(state["threshold"])
        if state["threshold"] is None:
            raise ValueError("state entry threshold is missing: the masker was not fitted")
        if state["mode"] not in ("position", "pooled"):
            raise ValueError(f"state entry mode must be 'position' or 'pooled', got {state['mode']!r}")
        if config.patch_size % config.pooled_size:
            raise ValueError(f"config: patch_size {config.patch_size} is not divisible by pooled_size {config.pooled_size}")
        side = image_size // config.patch_size
        if image_size % config.patch_size or state["grid"] != [side, side]:
            raise ValueError(f"state entry grid {state['grid']!r} is not the {side} x {side} patch grid of "
                             f"{image_size} px images with patch_size {config.patch_size}")
        dim = 3 * config.pooled_size ** 2
        check_tensor(state["mean"], "mean", (side * side if state["mode"] == "position" else 1, dim))
        check_tensor(state["precision"], "precision", (dim, dim))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = PatchStatsConfig(**state["config"])
        self.threshold, self.mean, self.precision = state["threshold"], state["mean"], state["precision"]
        self.grid = tuple(state["grid"]) if state["grid"] is not None else None  # a list after JSON
        self.mode = state["mode"]

    def mask_module(self) -> "PatchStatsMaskModule":
        """The fitted masker as a torch module (images -> M_B), so it can go into an ONNX graph."""
        return PatchStatsMaskModule(self.score_module())

    def score_module(self) -> "PatchStatsScoreModule":
        """The fitted masker's score map as a torch module (images -> [B, 1, H, W] float), for an ONNX graph."""
        if self.mean is None or self.precision is None or self.threshold is None:
            raise RuntimeError("patch_stats is not fitted: call fit() on normal images first")
        return PatchStatsScoreModule(self.config.patch_size, self.config.pooled_size, self.mean, self.precision,
                                     self.threshold)


class PatchStatsScoreModule(torch.nn.Module):
    """``images [B, 3, H, W] -> scores [B, 1, H, W]``: the same operations as
    :meth:`PatchStatsMasker.score_map` with the fitted statistics as buffers (exportable: pooling,
    unfold, matrix products and a nearest upsampling by a whole factor)."""

    def __init__(self, patch_size: int, pooled_size: int, mean: Tensor, precision: Tensor, threshold: float) -> None:
        super().__init__()
        self.patch_size, self.pooled_size = patch_size, pooled_size
        self.register_buffer("mean", mean.detach().float().cpu().clone())
        self.register_buffer("precision", precision.detach().float().cpu().clone())
        self.threshold = float(threshold)

    def forward(self, images: Tensor) -> Tensor:
        """:meth:`PatchStatsMasker.score_map`."""
        p, k = self.patch_size, self.pooled_size
        h, w = images.shape[-2:]
        pooled = F.avg_pool2d(images.float(), p // k)
        feats = F.unfold(pooled, kernel_size=k, stride=k).transpose(1, 2)  # [B, P, D]
        d = feats - self.mean
        md = ((d @ self.precision) * d).sum(-1)
        scores = md.clamp_min(0).sqrt().reshape(images.shape[0], 1, h // p, w // p)
        return F.interpolate(scores, scale_factor=float(p), mode="nearest")


class PatchStatsMaskModule(torch.nn.Module):
    """``images [B, 3, H, W] -> M_B [B, 1, H, W] bool``: :meth:`PatchStatsMasker.mask`, the score
    module's map above the fitted threshold."""

    def __init__(self, scores: PatchStatsScoreModule) -> None:
        super().__init__()
        self.scores = scores
        self.threshold = scores.threshold

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The score map and the mask, as every exportable masker's module gives them."""
        score_map = self.scores(images)
        return score_map, score_map > self.threshold

    def forward(self, images: Tensor) -> Tensor:
        return self.maps(images)[1]


@hookimpl
def register_maskers(register) -> None:
    register(
        "patch_stats",
        PatchStatsMasker,
        summary="Mahalanobis distance of m x m patches to normal patch statistics (weight-free)",
        weights="none",
        options=PatchStatsConfig,
    )
