"""The inference path of a fitted ``ami_net`` (features, token rules, inpainting score) as one module.

:class:`AMINetScorer` is what :class:`~fader_kit_plugins.ami_net.AMINetMasker` scores and masks
with, and what its ONNX export traces: the backbone features resized, smoothed and normalised,
the tokens' distances to the (per-image) centres, AMI-Net's outlier-token rule picking the tokens
to inpaint, the inpainting transformer, and the score map and token mask.  Every step is a
tensor operation at a fixed image size (no k-means at inference: the centres are the learned
queries' attention over the image's tokens, or fixed parameters), and the median of the robust
rule is a sort, which ONNX has.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from fader_kit.maskers.backbones import resize_features

from ._trained import gaussian_blur


class ScoringOptions(Protocol):
    """The options of :class:`~fader_kit_plugins.ami_net.AMINetConfig` the inference path reads."""

    feature_reduction: int
    feature_norm: str
    patch_size: int
    num_centres: int
    mask_rule: str
    blur_sigma: float
    score: str

    @property
    def k(self) -> float: ...

    @property
    def inpaint_k(self) -> float: ...


def outlier_token_mask(distance: Tensor, assignment: Tensor, num_centres: int, k_sigma: float) -> Tensor:
    """AMI-Net's adaptive rule: ``[B, N]`` True where a token is an outlier of its own cluster.

    Per image and cluster k with more than one member: masked iff
    ``distance >= mean_k + k_sigma * std_k`` (std with Bessel's correction, as torch.std).
    Tokens of singleton clusters are never masked.
    """
    onehot = F.one_hot(assignment, num_centres).to(distance.dtype)  # [B, N, K]
    count = onehot.sum(1)  # [B, K]
    mean = (distance.unsqueeze(-1) * onehot).sum(1) / count.clamp_min(1)
    var = ((distance.unsqueeze(-1) - mean.unsqueeze(1)) ** 2 * onehot).sum(1) / (count - 1).clamp_min(1)
    thresh = mean + k_sigma * var.sqrt()  # [B, K]
    own_thresh = thresh.gather(1, assignment)
    own_count = count.gather(1, assignment)
    return (own_count > 1) & (distance >= own_thresh)


def robust_outlier_mask(score: Tensor, k: float) -> Tensor:
    """``[B, N]`` True where a token's score >= its image's median + ``k`` * 1.4826 * MAD."""
    med = lower_median(score)
    mad = lower_median((score - med).abs()) * 1.4826
    return score >= med + k * mad


def lower_median(x: Tensor) -> Tensor:
    """``x.median(dim=1, keepdim=True).values`` (the lower middle value for an even count) as a sort,
    which ONNX has (``aten::median`` does not export)."""
    n = int(x.shape[1])
    return x.sort(dim=1).values.narrow(1, (n - 1) // 2, 1)


class AMINetScorer(nn.Module):
    """``images`` at the work size ``-> (score [B, 1, h, w], token mask [B, 1, rows, cols] or None)``:
    the token mask of ``config.mask_rule`` (None for ``quantile``: the score's threshold decides)."""

    def __init__(self, backbone: nn.Module, net: Any, config: ScoringOptions) -> None:
        super().__init__()
        self.backbone, self.net, self.config = backbone, net, config

    def raw_features(self, images: Tensor) -> Tensor:
        r = self.config.feature_reduction
        size = (int(images.shape[-2]) // r, int(images.shape[-1]) // r)
        return resize_features(self.backbone(images), size, smooth=3)

    def normalise(self, f: Tensor) -> Tensor:
        if self.config.feature_norm == "standardize":
            return (f - self.net.feat_mean) / self.net.feat_std
        if self.config.feature_norm == "l2":
            return F.normalize(f, dim=1)
        return f

    def analyse(self, images: Tensor) -> dict[str, Tensor]:
        """Feature map, token distances / outlier mask and the inpainted features of a batch."""
        cfg = self.config
        f = self.normalise(self.raw_features(images))
        dist, assign, _ = self.net.cluster_distances(f)
        masked = outlier_token_mask(dist, assign, cfg.num_centres, cfg.inpaint_k)  # AMI-Net's: mean + k std
        rows, cols = int(f.shape[-2]) // cfg.patch_size, int(f.shape[-1]) // cfg.patch_size
        pred = self.net.inpaint_tokens(f, masked)
        recon = self.net.unpatchify(pred, rows, cols)
        target = self.net.patchify(f)
        shape = (-1, rows * cols, cfg.patch_size**2, self.net.channels)  # per token: its p*p feature vectors
        mse = (pred - target).pow(2).view(shape).mean(-1)
        cos_gap = 1 - F.cosine_similarity(pred.view(shape), target.view(shape), dim=-1)
        token_score = (mse * cos_gap).mean(-1)  # [B, N]: the score map's rule, per token
        if cfg.mask_rule == "score_mad":
            score_masked = robust_outlier_mask(token_score, cfg.k)
        else:
            score_masked = outlier_token_mask(token_score, assign, cfg.num_centres, cfg.k)
        return {
            "features": f, "recon": recon,
            "distance": dist.view(-1, 1, rows, cols), "token_mask": masked.view(-1, 1, rows, cols),
            "score_token_mask": score_masked.view(-1, 1, rows, cols),
        }

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.analyse(images)
        f, r = out["features"], out["recon"]
        size = (int(images.shape[-2]), int(images.shape[-1]))

        def up(m: Tensor) -> Tensor:
            return F.interpolate(m, size=size, mode="bilinear", align_corners=True)

        dis = up((f - r).pow(2).mean(1, keepdim=True))
        dirn = up(1 - F.cosine_similarity(f, r, dim=1).unsqueeze(1))
        sigma = self.config.blur_sigma * size[0] / 256
        score = gaussian_blur(dis, sigma) * gaussian_blur(dirn, sigma)
        if self.config.score == "inpaint_distance":
            score = score * up(out["distance"])
        rule = self.config.mask_rule
        mask = None if rule == "quantile" else out["token_mask" if rule == "tokens" else "score_token_mask"]
        return score, mask
