"""``dsr``: dual subspace re-projection (Zavrtanik, Kristan, Skocaj; ECCV 2022).

Read from the public DSR code (VitjanZ/DSR_anomaly_detection) for the facts, written here anew.

1. *Discrete latent model* (VQ-VAE-2 style): an encoder to 1/4 resolution (F_hi) and one more
   stride-2 encoder (F_lo), each quantised by an EMA codebook (K_hi, K_lo); the upsampled
   quantised F_lo joins F_hi before its quantisation; a *general appearance decoder* rebuilds
   the image from both.  DSR pretrains it on ImageNet, once, for every category: a *general*
   appearance model, against which the object-specific stage contrasts.  Its official
   checkpoint is loaded when given (``weights=`` the official ``vq_model_pretrained_128_4096.pckl``,
   with the official sizes).  Offline (``codebook="general"``, the default) the general model is
   pretrained once on a stream of procedurally generated textures and shapes
   (:mod:`fader_kit.data.procedural`: ImageNet cannot be had offline), cached under
   ``<cache root>/dsr/general-vq/<digest of its sizes and training>/`` and loaded by every later
   fit of any category.  ``codebook="category"`` trains it on the category's normal images
   instead (the earlier scale-down: its codebooks then span only the category, and the anomaly
   module has little to contrast).  ``MaskerInfo.details["codebook"]`` says which was used.
2. *Object-specific stage*, trained with anomalies generated **in the quantised feature space**:
   inside a Perlin-noise mask every quantised vector is swapped for a codebook vector drawn from
   its ``strength * K`` nearest (the nearest 5 % skipped), on F_lo, F_hi or both; two *subspace
   restriction* nets re-project the features to normal ones (MSE to the clean quantised
   features), the *object-specific decoder* rebuilds the image from them (10 x MSE to the
   image), and the *anomaly detection module* (a U-Net on both reconstructions) segments the
   difference (focal loss against the low-resolution mask).
3. *Upsampling module*, trained on **image-space** synthetic anomalies (a random colour blended
   into a Perlin mask, half the samples normal) with everything else frozen: a U-Net on both
   reconstructions and the coarse segmentation, focal loss against the full-resolution mask.

Its segmentation output (softmax probability of "anomalous") is the score map; ``output="coarse"``
scores with the anomaly detection module's map instead and skips stage 3.  Every width and
epoch count is configuration; the defaults are scaled down to fit a CPU (paper: widths 128,
codebooks of 4096, 100 epochs of 8000 samples).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from fader_kit.errors import ConfigError, UserError
from fader_kit.util.files import torch_save_atomic, write_text_atomic
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import MaskerInfo
from fader_kit.maskers.weights import MissingWeightsError, find_local_weights, read_checkpoint

from ._trained import TrainedMasker, TrainedMaskerConfig, batches, progress_bar, trained_factory

NAME = "dsr"
OFFICIAL_VQ_NAME = "vq_model_pretrained_128_4096"
OFFICIAL_SIZES = {"hidden": 128, "res_hidden": 64, "res_layers": 2, "embedding_dim": 128, "num_embeddings": 4096}


class DSRConfig(TrainedMaskerConfig):
    """DSR options; defaults are the CPU scale-down (the paper's sizes are in ``OFFICIAL_SIZES``)."""

    weights: str | None = Field(None, description="official pretrained VQ model checkpoint (file or folder)")
    allow_random_weights: bool = Field(False, description="accepted for a uniform CLI; DSR never needs it")
    input_bgr: bool = Field(False, description="feed BGR to the VQ model (the official checkpoint was trained on cv2 BGR)")
    hidden: int = Field(64, ge=8)
    res_hidden: int = Field(32, ge=4)
    res_layers: int = Field(2, ge=0)
    embedding_dim: int = Field(64, ge=4)
    num_embeddings: int = Field(
        1024, ge=32, description="codes per codebook (paper: 4096); 1024 halved the general VQ's reconstruction "
        "error on real photographs against 512 and raised DSR's pixel AUROC on MPDD (README)",
    )
    commitment: float = Field(0.25, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    restriction_width: int = Field(32, ge=4, description="subspace restriction nets' base width (paper: 128)")
    recon_width: int = Field(32, ge=4, description="object-specific decoder width (paper: 256)")
    seg_width: int = Field(16, ge=4, description="anomaly detection U-Net base width (paper: 64)")
    seg_downsample: int = Field(
        2, ge=1, description="the anomaly detection module sees the reconstructions shrunk by this factor "
        "(paper: 1; its training target is the coarse feature-grid mask anyway, the upsampling module refines)",
    )
    upsample_width: int = Field(16, ge=4, description="upsampling U-Net base width (paper: 64)")
    strength_min: float = Field(0.2, gt=0, le=1, description="feature anomalies: strength ~ U(min, 1)")
    vq_epochs: int = Field(40, ge=1, description="epochs of the VQ model when trained here")
    vq_lr: float = Field(1e-3, gt=0)
    vq_anomaly_share: float = Field(
        0.5, ge=0, le=1,
        description="trained-here VQ only: share of training samples colour-shifted, and (independently) "
        "with pasted colour anomalies",
    )
    codebook: Literal["general", "category"] = Field(
        "general",
        description="VQ model when no official checkpoint is given: general = pretrained once on procedurally "
        "generated images (fader_kit/data/procedural.py), cached and reused by every category (DSR's premise); "
        "category = trained on the category's normal images (the earlier scale-down)",
    )
    general_steps: int = Field(
        4000, ge=1, description="general VQ pretraining: optimiser steps (about 30 CPU minutes once at the "
        "defaults, then cached)",
    )
    general_batch_size: int = Field(8, ge=1, description="general VQ pretraining: images per step")
    general_size: int = Field(128, ge=64, description="general VQ pretraining: image size (the model is convolutional)")
    general_seed: int = Field(0, description="general VQ pretraining: seed of the image stream and initialisation")
    cache_dir: str | None = Field(
        None, description="cache root of the general VQ (default $FADER_KIT_CACHE or ~/.cache/fader_kit)"
    )
    epochs: int = Field(40, ge=1, description="epochs of the object-specific stage")
    image_anomaly_share: float = Field(
        0.0, ge=0, le=1,
        description="object-specific stage: share of the training samples whose anomaly is pasted in image "
        "space (a procedural texture blended into a Perlin mask) instead of drawn in the quantised feature "
        "space (DSR: 0)",
    )
    upsample_epochs: int = Field(20, ge=1, description="epochs of the upsampling module")
    output: Literal["upsampled", "coarse"] = Field(
        "upsampled",
        description="score map: upsampled = DSR's full pipeline; coarse = the anomaly detection module's map "
        "(the upsampling module is then not trained). On MPDD the coarse map scored 0.10 pixel AUROC higher "
        "(3 seeds, README), but on a tiny constructed case it was inverted where the upsampled one was not",
    )
    lr: float = Field(1e-3, gt=0)

    @field_validator("weights", "cache_dir", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return None if v is None else str(v)

    @field_validator("hidden")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"hidden must be even, got {v}")
        return v


# -- synthetic anomalies --------------------------------------------------------------------
def perlin_noise(shape: tuple[int, int], res: tuple[int, int], generator: torch.Generator) -> Tensor:
    """2-D gradient (Perlin) noise ``[H, W]`` with ``res`` lattice cells per axis, values ~[-1, 1]."""
    h, w = shape
    ry, rx = res
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    y = torch.arange(h, dtype=torch.float32) * ry / h
    x = torch.arange(w, dtype=torch.float32) * rx / w
    iy, ix = y.floor().long().clamp(max=ry - 1), x.floor().long().clamp(max=rx - 1)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> Tensor:
        g = grads[iy[:, None] + dy, ix[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: Tensor) -> Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return math.sqrt(2) * (top * (1 - uy) + bottom * uy)


def perlin_masks(n: int, size: tuple[int, int], generator: torch.Generator, p_normal: float = 0.5) -> Tensor:
    """``[n, 1, H, W]`` float masks: thresholded (> 0.5), randomly rotated Perlin noise of random
    scale 2^0..2^5 per axis; a share ``p_normal`` of the masks is empty (normal samples)."""
    masks = torch.zeros(n, 1, *size)
    for i in range(n):
        if torch.rand(1, generator=generator).item() < p_normal:
            continue
        for _ in range(8):  # redraw the rare empty mask
            ry, rx = (2 ** int(torch.randint(0, 6, (1,), generator=generator)) for _ in range(2))
            noise = perlin_noise(size, (ry, rx), generator)
            angle = (torch.rand(1, generator=generator).item() - 0.5) * math.pi  # +-90 degrees
            cos, sin = math.cos(angle), math.sin(angle)
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).unsqueeze(0)
            grid = F.affine_grid(theta, [1, 1, *size], align_corners=False)
            rotated = F.grid_sample(noise[None, None], grid, align_corners=False)
            m = (rotated > 0.5).float()[0]
            if m.any():
                masks[i] = m
                break
    return masks


def blend_anomalies(images: Tensor, masks: Tensor, source: Tensor, generator: torch.Generator) -> Tensor:
    """Image-space anomalies: ``(1 - beta) * source + beta * image`` inside ``masks``, beta ~ U(0, 0.8)
    per image; ``source`` is ``[n, 3, 1, 1]`` (a flat colour) or ``[n, 3, H, W]`` (a texture).  The
    random draws come from the CPU ``generator``; the result is on ``images``' device."""
    beta = (torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 0.8).to(images)
    source = source.to(images)
    blended = (1 - beta) * source + beta * images
    return images * (1 - masks) + blended * masks


def paste_colour_anomalies(images: Tensor, masks: Tensor, generator: torch.Generator) -> Tensor:
    """A random flat colour blended into ``masks`` (DSR's upsampling-module anomalies)."""
    colour = torch.rand(images.shape[0], 3, 1, 1, generator=generator)
    return blend_anomalies(images, masks, colour, generator)


def paste_texture_anomalies(images: Tensor, masks: Tensor, generator: torch.Generator) -> Tensor:
    """A procedurally generated texture or shape (:func:`fader_kit.data.procedural.general_images`)
    blended into ``masks``: image-space anomalies with structure, not only colour."""
    from fader_kit.data.procedural import general_images

    n, _, h, w = images.shape
    textures = general_images(n, max(h, w), generator)[:, :, :h, :w]
    return blend_anomalies(images, masks, textures, generator)


def random_colour_shift(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """With probability ``p`` per image: permute the colour channels, then random per-channel gain
    (0.5..1.5) and offset (-0.3..0.3).  Teaches a VQ model trained on few images to pass colours
    through instead of memorising the normal palette."""
    n = images.shape[0]
    out = images.clone()
    apply = torch.rand(n, generator=generator) < p
    for i in torch.nonzero(apply).flatten().tolist():
        perm = torch.randperm(3, generator=generator)
        gain = 0.5 + torch.rand(3, 1, 1, generator=generator)
        offset = (torch.rand(3, 1, 1, generator=generator) - 0.5) * 0.6
        out[i] = (images[i][perm] * gain + offset).clamp(0, 1)
    return out


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss on softmax probabilities ``[B, 2, H, W]`` against a 0/1 mask ``[B, 1, H, W]``."""
    onehot = torch.cat([1 - target, target], dim=1).clamp(smooth, 1 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


# -- discrete latent model ------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResidualStack(nn.Module):
    def __init__(self, channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Residual(channels, hidden) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return F.relu(x)


class EncoderHi(nn.Module):
    """Image -> 1/4 resolution features."""

    def __init__(self, h: int, rh: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, h // 2, 4, 2, 1)
        self.conv2 = nn.Conv2d(h // 2, h, 4, 2, 1)
        self.conv3 = nn.Conv2d(h, h, 3, 1, 1)
        self.res = ResidualStack(h, rh, layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


class EncoderLo(nn.Module):
    """1/4 -> 1/8 resolution features."""

    def __init__(self, h: int, rh: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(h, h, 4, 2, 1)
        self.conv2 = nn.Conv2d(h, h, 3, 1, 1)
        self.res = ResidualStack(h, rh, layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(F.relu(self.conv2(F.relu(self.conv1(x)))))


class GeneralDecoder(nn.Module):
    """Quantised [up(Q_lo), Q_hi] (2e channels at 1/4) -> image."""

    def __init__(self, in_channels: int, h: int, rh: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, h, 3, 1, 1)
        self.res = ResidualStack(h, rh, layers)
        self.deconv1 = nn.ConvTranspose2d(h, h // 2, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(h // 2, 3, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv2(F.relu(self.deconv1(self.res(self.conv1(x)))))


class VectorQuantizerEMA(nn.Module):
    """Nearest-codebook quantisation; the codebook follows EMA cluster means (no gradients)."""

    def __init__(
        self, num: int, dim: int, commitment: float, decay: float, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.commitment, self.decay, self.eps = commitment, decay, eps
        self.register_buffer("codebook", torch.randn(num, dim))
        self.register_buffer("ema_count", torch.zeros(num))
        self.register_buffer("ema_sum", self.codebook.clone())

    def nearest(self, flat: Tensor) -> Tensor:
        d = flat.pow(2).sum(1, keepdim=True) + self.codebook.pow(2).sum(1) - 2 * flat @ self.codebook.t()
        return d.argmin(1)

    @torch.no_grad()
    def init_from(self, z: Tensor, generator: torch.Generator) -> None:
        """Data-dependent start: codebook = random feature vectors of ``z`` (fewer dead codes)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        pick = torch.randint(0, flat.shape[0], (self.codebook.shape[0],), generator=generator).to(flat.device)
        self.codebook.copy_(flat[pick] + 1e-3 * torch.randn_like(flat[pick]))
        self.ema_count.zero_()  # unused codes are restarted after the first update
        self.ema_sum.zero_()

    def _restart_dead(self, flat: Tensor) -> None:
        """Codes that (almost) never win are moved onto random current inputs.  Without it a
        codebook trained from scratch on a few images collapses to a handful of codes.  A code is
        dead once its EMA count fell below half of one assignment's weight ``1 - decay`` (about
        70 steps unused at decay 0.99); a restarted code starts with one assignment's weight."""
        unit = 1.0 - self.decay
        dead = self.ema_count < 0.5 * unit
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        fresh = flat[pick] + 1e-3 * flat.std() * torch.randn_like(flat[pick])
        self.codebook[dead] = fresh
        self.ema_count[dead] = unit
        self.ema_sum[dead] = fresh * unit

    def forward(self, z: Tensor, update: bool = False) -> tuple[Tensor, Tensor]:
        """Quantised ``z`` (straight-through gradient) and the commitment loss; EMA step if ``update``."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = self.nearest(flat.detach())
        q = self.codebook[idx]
        if update:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.codebook.shape[0]).to(flat.dtype)
                self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                n = self.ema_count.sum()
                count = (self.ema_count + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
                self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat.detach(), alpha=1 - self.decay)
                self.codebook.copy_(self.ema_sum / count.unsqueeze(1))
                self._restart_dead(flat.detach())
        loss = self.commitment * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return q.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2), loss


class DiscreteLatentModel(nn.Module):
    """DSR's VQ model: two encoders, two codebooks, the general appearance decoder."""

    def __init__(self, cfg: DSRConfig) -> None:
        super().__init__()
        h, rh, nl, e = cfg.hidden, cfg.res_hidden, cfg.res_layers, cfg.embedding_dim
        self.enc_hi = EncoderHi(h, rh, nl)
        self.enc_lo = EncoderLo(h, rh, nl)
        self.pre_vq_lo = nn.Conv2d(h, e, 1)
        self.pre_vq_hi = nn.Conv2d(h + e, e, 1)
        self.vq_lo = VectorQuantizerEMA(cfg.num_embeddings, e, cfg.commitment, cfg.ema_decay)
        self.vq_hi = VectorQuantizerEMA(cfg.num_embeddings, e, cfg.commitment, cfg.ema_decay)
        self.upsample_lo = nn.ConvTranspose2d(e, e, 4, 2, 1)
        self.decoder = GeneralDecoder(2 * e, h, rh, nl)

    def encode(self, x: Tensor, update: bool = False) -> dict[str, Tensor]:
        enc_hi = self.enc_hi(x)
        z_lo = self.pre_vq_lo(self.enc_lo(enc_hi))
        q_lo, loss_lo = self.vq_lo(z_lo, update)
        z_hi = self.pre_vq_hi(torch.cat([enc_hi, self.upsample_lo(q_lo)], 1))
        q_hi, loss_hi = self.vq_hi(z_hi, update)
        return {"enc_hi": enc_hi, "z_lo": z_lo, "q_lo": q_lo, "z_hi": z_hi, "q_hi": q_hi, "loss": loss_lo + loss_hi}

    def decode(self, q_lo: Tensor, q_hi: Tensor) -> Tensor:
        return self.decoder(torch.cat([self.upsample_lo(q_lo), q_hi], 1))


def official_vq_key(key: str) -> str:
    """Name in :class:`DiscreteLatentModel` of a tensor of the official DSR VQ checkpoint."""
    rules = [
        ("_encoder_b.", "enc_hi."), ("_encoder_t.", "enc_lo."), ("_pre_vq_conv_bot.", "pre_vq_hi."),
        ("_pre_vq_conv_top.", "pre_vq_lo."), ("_vq_vae_bot.", "vq_hi."), ("_vq_vae_top.", "vq_lo."),
        ("_decoder_b.", "decoder."), ("upsample_t.", "upsample_lo."),
        ("_residual_stack._layers.", "res.layers."), ("._block.", ".block."),
        ("_conv_trans_1", "deconv1"), ("_conv_trans_2", "deconv2"),
        ("_conv_1", "conv1"), ("_conv_2", "conv2"), ("_conv_3", "conv3"),
        ("_embedding.weight", "codebook"), ("_ema_cluster_size", "ema_count"), ("_ema_w", "ema_sum"),
    ]
    for old, new in rules:
        key = key.replace(old, new)
    return key


def load_official_vq(model: DiscreteLatentModel, path: Path) -> None:
    """Load the official ``vq_model_pretrained_128_4096`` checkpoint into ``model`` (strict)."""
    state = read_checkpoint(path)
    renamed = {official_vq_key(k): v for k, v in state.items()} if any(k.startswith("_") for k in state) else state
    own = model.state_dict()
    wrong = [k for k, v in renamed.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong or set(renamed) != set(own):
        sizes = " ".join(f"{k}={v}" for k, v in OFFICIAL_SIZES.items())
        raise MissingWeightsError(
            f"DSR VQ checkpoint {path} does not fit the configured model "
            f"(mismatched: {', '.join((wrong or sorted(set(renamed) ^ set(own)))[:4])}); "
            f"the official checkpoint needs the options {sizes} input_bgr=true"
        )
    model.load_state_dict(renamed, strict=True)


# -- the VQ model's training: on the normal images, or once on general images ---------------
def fit_vq(
    vq: DiscreteLatentModel,
    first: Tensor,
    steps: Iterable[Tensor],
    lr: float,
    generator: torch.Generator,
    after_step: Callable[[int, Tensor], None] | None = None,
) -> None:
    """Train ``vq`` (reconstruction MSE + commitment, codebooks by EMA with dead-code restarts) on
    the model-ready batches ``steps`` (already on the model's device); ``first`` (a batch of up to
    32 images) initialises both codebooks from encoder outputs."""
    vq.train()
    with torch.no_grad():
        enc_hi = vq.enc_hi(first)
        z_lo = vq.pre_vq_lo(vq.enc_lo(enc_hi))
        vq.vq_lo.init_from(z_lo, generator)
        q_lo, _ = vq.vq_lo(z_lo)
        vq.vq_hi.init_from(vq.pre_vq_hi(torch.cat([enc_hi, vq.upsample_lo(q_lo)], 1)), generator)
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    for i, x in enumerate(steps):
        enc = vq.encode(x, update=True)
        loss = F.mse_loss(vq.decode(enc["q_lo"], enc["q_hi"]), x) + enc["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(i, loss.detach())
    vq.eval()


GENERAL_VQ_VERSION = 1
GENERAL_VQ_FILE = "general_vq.pt"
GENERAL_VQ_KEYS = (
    "hidden", "res_hidden", "res_layers", "embedding_dim", "num_embeddings", "commitment", "ema_decay", "vq_lr",
    "general_steps", "general_batch_size", "general_size", "general_seed",
)
general_vq_pretrain_calls = 0
"""How many times :func:`pretrain_general_vq` ran in this process (tests assert reuse with it)."""


def general_vq_recipe(cfg: DSRConfig) -> dict[str, Any]:
    """Everything the general VQ model depends on: its sizes, its training and the image stream's version."""
    from fader_kit.data.procedural import GENERATOR_VERSION

    options = cfg.model_dump(mode="json")
    return {"version": GENERAL_VQ_VERSION, "images": f"procedural-v{GENERATOR_VERSION}",
            **{k: options[k] for k in GENERAL_VQ_KEYS}}


def general_vq_digest(cfg: DSRConfig) -> str:
    return hashlib.sha256(json.dumps(general_vq_recipe(cfg), sort_keys=True).encode()).hexdigest()[:16]


def general_vq_path(cfg: DSRConfig) -> Path:
    """``<cache root>/dsr/general-vq/<digest>/general_vq.pt`` (cache root as the synthetic data's)."""
    from fader_kit.data.synthetic import cache_root

    return cache_root(cfg.cache_dir) / "dsr" / "general-vq" / general_vq_digest(cfg) / GENERAL_VQ_FILE


def pretrain_general_vq(cfg: DSRConfig, device: torch.device, progress: bool = False) -> dict[str, Tensor]:
    """Train a fresh VQ model on ``general_steps`` batches of procedural images; its state dict (CPU).

    Seeded by ``general_seed`` alone, with the caller's RNG state restored: the result does not
    depend on the category or the fit seed, which is what lets every category share it."""
    from fader_kit.data.procedural import general_images

    global general_vq_pretrain_calls
    general_vq_pretrain_calls += 1
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.general_seed)
        g = torch.Generator().manual_seed(cfg.general_seed)
        vq = DiscreteLatentModel(cfg).to(device)
        size = cfg.general_size

        def stream() -> Iterable[Tensor]:
            for _ in range(cfg.general_steps):
                yield general_images(cfg.general_batch_size, size, g).to(device)

        bar = progress_bar(cfg.general_steps, progress, f"{NAME} general VQ")

        def tick(i: int, loss: Tensor) -> None:
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3g}")

        fit_vq(vq, general_images(32, size, g).to(device), stream(), cfg.vq_lr, g, tick)
        bar.close()
    return {k: v.detach().cpu() for k, v in vq.state_dict().items()}


#: CPU seconds per pretraining step at the default batch and image size, one thread (measured:
#: 4000 steps in 1885 s); the announcement before a pretraining scales it.
GENERAL_VQ_CPU_SECONDS_PER_STEP = 0.47


def general_vq_estimate(cfg: DSRConfig, device: torch.device) -> str:
    """Roughly how long the pretraining takes, for the line that announces it."""
    if device.type != "cpu":
        return "minutes on a GPU"
    default = DSRConfig()
    scale = (cfg.general_batch_size / default.general_batch_size) * (cfg.general_size / default.general_size) ** 2
    minutes = cfg.general_steps * GENERAL_VQ_CPU_SECONDS_PER_STEP * scale / 60
    return f"about {max(minutes, 0.1):.0f} CPU minutes on one core" if minutes >= 1 else "under a minute"


def load_general_vq(vq: DiscreteLatentModel, cfg: DSRConfig, progress: bool = False) -> Path:
    """Load the cached general VQ model into ``vq``; pretrain and cache it first when it is missing.

    The file is written atomically (temporary name, then rename) next to a ``recipe.json``, so two
    processes can race without leaving a half-written model; a file that does not load is an error
    naming it, never silently retrained."""
    path = general_vq_path(cfg)
    device = next(vq.parameters()).device
    if not path.is_file():
        print(f"dsr: pretraining the general VQ codebook once ({cfg.general_steps} steps on procedural images, "
              f"{general_vq_estimate(cfg, device)}); it is cached at {path} and every later fit reuses it",
              file=sys.stderr, flush=True)
        state = pretrain_general_vq(cfg, device, progress)
        torch_save_atomic(state, path)
        write_text_atomic(path.parent / "recipe.json", json.dumps(general_vq_recipe(cfg), indent=2) + "\n")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        vq.load_state_dict(state, strict=True)
    except Exception as exc:
        raise UserError(f"dsr: cached general VQ model {path} does not load ({exc}); delete it to retrain") from None
    return path


# -- object-specific networks ---------------------------------------------------------------
def conv_in_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]


class SubspaceRestriction(nn.Module):
    """Encoder-decoder (no skips) that maps possibly anomalous quantised features to normal ones."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            *conv_in_relu(channels, w), *conv_in_relu(w, w), nn.MaxPool2d(2),
            *conv_in_relu(w, 2 * w), *conv_in_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv_in_relu(2 * w, 4 * w), *conv_in_relu(4 * w, 4 * w),
        )
        self.dec = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_in_relu(4 * w, 2 * w),
            *conv_in_relu(2 * w, 2 * w), *conv_in_relu(2 * w, 2 * w),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_in_relu(2 * w, w),
            *conv_in_relu(w, w), *conv_in_relu(w, w), nn.Conv2d(w, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x))


class ObjectDecoder(nn.Module):
    """Object-specific decoder: restored quantised features (2e at 1/4) -> image."""

    def __init__(self, in_channels: int, width: int, h: int, rh: int, layers: int) -> None:
        super().__init__()
        w = width
        self.down = nn.Sequential(
            *conv_in_relu(in_channels, w), *conv_in_relu(w, 2 * w), nn.MaxPool2d(2),
            *conv_in_relu(2 * w, 2 * w), *conv_in_relu(2 * w, 4 * w), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, w, 1),
        )
        self.up1 = nn.ConvTranspose2d(w, w, 4, 2, 1)
        self.up2 = nn.ConvTranspose2d(w, w, 4, 2, 1)
        self.conv = nn.Conv2d(w, h, 3, padding=1)
        self.res = ResidualStack(h, rh, layers)
        self.deconv1 = nn.ConvTranspose2d(h, h // 2, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(h // 2, 3, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.up2(F.relu(self.up1(self.down(x)))))
        return self.deconv2(F.relu(self.deconv1(self.res(self.conv(x)))))


class UNet(nn.Module):
    """4-level U-Net with instance norm (the anomaly detection and upsampling modules)."""

    def __init__(self, c_in: int, c_out: int, w: int) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(*conv_in_relu(a, b), *conv_in_relu(b, b))

        self.b1, self.b2, self.b3, self.b4 = block(c_in, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_in_relu(4 * w, 4 * w))
        self.d1 = block(8 * w, 4 * w)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_in_relu(4 * w, 2 * w))
        self.d2 = block(4 * w, 2 * w)
        self.up3 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_in_relu(2 * w, w))
        self.d3 = block(2 * w, w)
        self.out = nn.Conv2d(w, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.b1(x)
        b2 = self.b2(F.max_pool2d(b1, 2))
        b3 = self.b3(F.max_pool2d(b2, 2))
        b4 = self.b4(F.max_pool2d(b3, 2))
        d1 = self.d1(torch.cat([self.up1(b4), b3], 1))
        d2 = self.d2(torch.cat([self.up2(d1), b2], 1))
        d3 = self.d3(torch.cat([self.up3(d2), b1], 1))
        return self.out(d3)


def distant_code_anomalies(
    z: Tensor, q: Tensor, codebook: Tensor, mask: Tensor, strength: Tensor, generator: torch.Generator
) -> Tensor:
    """DSR's feature-space anomaly: inside ``mask`` (0/1, at the feature resolution) replace each
    quantised vector by a codebook vector drawn uniformly from ranks ``[0.05 K, strength * K]`` of
    the codes nearest to the un-quantised ``z`` (per-image ``strength`` in (0, 1]).

    Only the masked positions are ranked: sorting every position's K distances was the most
    expensive part of a training step, and on average most positions are outside the mask."""
    b, e, h, w = z.shape
    k = codebook.shape[0]
    picked = mask[:, 0].flatten(1) > 0  # [B, HW]
    if not bool(picked.any()):
        return q
    bi, pi = picked.nonzero(as_tuple=True)
    vectors = z.permute(0, 2, 3, 1).reshape(b, h * w, e)[bi, pi]  # [N, e]
    order = torch.cdist(vectors, codebook).argsort(-1)  # [N, K]
    skip = int(0.05 * k)
    top = (strength * k).long().add(1).clamp(skip + 1, k - 1).to(z.device)[bi]  # [N]
    u = torch.rand(bi.shape[0], generator=generator).to(z.device)
    rank = (skip + u * (top - skip).float()).long().clamp(max=k - 1)
    codes = codebook[order.gather(1, rank.unsqueeze(-1)).squeeze(-1)]  # [N, e]
    out = q.permute(0, 2, 3, 1).reshape(b, h * w, e).clone()
    out[bi, pi] = codes
    return out.view(b, h, w, e).permute(0, 3, 1, 2)


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Max-pool a full-resolution mask to a feature grid (a cell is anomalous if any pixel is)."""
    return F.adaptive_max_pool2d(mask, size)


# -- the masker -----------------------------------------------------------------------------
class DSRMasker(TrainedMasker):
    """DSR's segmentation output (probability of "anomalous") as the score map."""

    name = NAME
    config: DSRConfig

    def __init__(self, config: DSRConfig, device: str | torch.device | None = None) -> None:
        self.vq_file = find_local_weights(OFFICIAL_VQ_NAME, config.weights)
        self.weights_source = f"file:{self.vq_file}" if self.vq_file is not None else "trained-here"
        self.general_vq_file: Path | None = None
        super().__init__(config, device)

    @property
    def codebook(self) -> str:
        """Which VQ model (codebooks) the masker uses: ``official:<file>``, ``general:<digest>`` or ``category``."""
        if self.vq_file is not None:
            return f"official:{self.vq_file}"
        if self.config.codebook == "general":
            return f"general:{general_vq_digest(self.config)}"
        return "category"

    @property
    def info(self) -> MaskerInfo:
        details: dict[str, Any] = {"codebook": self.codebook, "output": self.config.output}
        if self.general_vq_file is not None:
            details["general_vq_file"] = str(self.general_vq_file)
        return self._info(self.weights_source, **details)

    def _build(self) -> None:
        cfg = self.config
        e = cfg.embedding_dim
        self.vq = DiscreteLatentModel(cfg)
        if self.vq_file is not None:
            load_official_vq(self.vq, self.vq_file)
        self.restrict_hi = SubspaceRestriction(e, cfg.restriction_width)
        self.restrict_lo = SubspaceRestriction(e, cfg.restriction_width)
        self.object_decoder = ObjectDecoder(2 * e, cfg.recon_width, cfg.hidden, cfg.res_hidden, cfg.res_layers)
        self.segmenter = UNet(6, 2, cfg.seg_width)
        self.upsampler = UNet(8, 2, cfg.upsample_width)
        for module in (self.object_decoder, self.segmenter):  # DSR's N(0, 0.02) conv init
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(m.weight, 0.0, 0.02)

    def _check_work_size(self, size: tuple[int, int]) -> None:
        unit = 32 * self.config.seg_downsample
        if min(size) < 64:
            raise ConfigError(f"dsr: image size {size} must be at least 64 (the 1/8 feature grid is pooled twice)")
        if size[0] % unit or size[1] % unit:
            raise ValueError(
                f"dsr: image size {size} must be divisible by {unit} (VQ strides, U-Net depth, seg_downsample)"
            )

    def _input(self, images: Tensor) -> Tensor:
        return images.flip(1) if self.config.input_bgr else images

    def _restore(self, q_lo: Tensor, q_hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Subspace restriction + re-quantisation; returns (features_lo, features_hi, Q_lo, Q_hi)."""
        f_lo = self.restrict_lo(q_lo)
        f_hi = self.restrict_hi(q_hi)
        r_lo, _ = self.vq.vq_lo(f_lo)
        r_hi, _ = self.vq.vq_hi(f_hi)
        return f_lo, f_hi, r_lo, r_hi

    def _segment(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coarse segmentation probabilities and both reconstructions of images ``x``."""
        enc = self.vq.encode(x)
        _, _, r_lo, r_hi = self._restore(enc["q_lo"], enc["q_hi"])
        recon_obj = self.object_decoder(torch.cat([self.vq.upsample_lo(r_lo), r_hi], 1))
        recon_gen = self.vq.decode(enc["q_lo"], enc["q_hi"])
        seg = self._segmenter_probs(recon_obj, recon_gen)
        return seg, recon_obj, recon_gen

    def _segmenter_probs(self, recon_obj: Tensor, recon_gen: Tensor) -> Tensor:
        """Anomaly detection module on both reconstructions; softmax probabilities at full size."""
        x = torch.cat([recon_obj, recon_gen], 1)
        f = self.config.seg_downsample
        if f > 1:
            x = F.avg_pool2d(x, f)
        logits = self.segmenter(x)
        if f > 1:
            logits = F.interpolate(logits, size=recon_obj.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(logits, 1)

    # -- training -------------------------------------------------------------------------
    def _train(self, images: Tensor, generator: torch.Generator, progress: bool) -> None:
        if self.vq_file is None and self.config.codebook == "general":
            self.general_vq_file = load_general_vq(self.vq, self.config, progress)
        bar = progress_bar(self._stage_epochs(), progress, f"{NAME} fit")
        if self.vq_file is None and self.config.codebook == "category":
            self._train_vq(images, generator, bar)
        self._train_object_stage(images, generator, bar)
        if self.config.output == "upsampled":
            self._train_upsampler(images, generator, bar)
        bar.close()

    def _stage_epochs(self) -> int:
        cfg = self.config
        own_vq = self.vq_file is None and cfg.codebook == "category"
        upsample = cfg.upsample_epochs if cfg.output == "upsampled" else 0
        return (cfg.vq_epochs if own_vq else 0) + cfg.epochs + upsample

    def _freeze(self, *modules: nn.Module) -> None:
        for m in modules:
            m.eval()
            m.requires_grad_(False)

    def _train_vq(self, images: Tensor, generator: torch.Generator, bar: Any) -> None:
        """The ``codebook="category"`` VQ model: trained on the normal images themselves."""
        cfg = self.config
        size = tuple(images.shape[-2:])
        per_epoch = math.ceil(len(images) / cfg.batch_size)

        def stream() -> Iterable[Tensor]:
            for _ in range(cfg.vq_epochs):
                for idx in batches(len(images), cfg.batch_size, generator=generator):
                    clean = images[idx]
                    # trained on the normal images alone the codebooks could not represent a defect,
                    # and the general decoder would hide the very difference the segmenter looks
                    # for: part of the samples carry colour shifts and pasted colour anomalies
                    if cfg.vq_anomaly_share > 0:
                        clean = random_colour_shift(clean, generator, p=cfg.vq_anomaly_share)
                        masks = perlin_masks(len(clean), size, generator, p_normal=1 - cfg.vq_anomaly_share)
                        clean = paste_colour_anomalies(clean, masks, generator)
                    yield self._input(clean.to(self.device))

        def tick(i: int, loss: Tensor) -> None:
            if (i + 1) % per_epoch == 0:
                bar.update(1)
                bar.set_postfix(stage="vq", loss=f"{loss.item():.3g}")

        first = self._input(images[: min(len(images), 32)].to(self.device))
        fit_vq(self.vq, first, stream(), cfg.vq_lr, generator, tick)

    def _train_object_stage(self, images: Tensor, generator: torch.Generator, bar: Any) -> None:
        cfg = self.config
        self._freeze(self.vq)
        trained = [self.restrict_hi, self.restrict_lo, self.object_decoder, self.segmenter]
        for m in trained:
            m.train()
        opt = torch.optim.Adam([p for m in trained for p in m.parameters()], lr=cfg.lr)
        milestone = max(1, int(0.8 * cfg.epochs))
        size = tuple(images.shape[-2:])
        for epoch in range(cfg.epochs):
            if epoch == milestone:
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * 0.1
            for idx in batches(len(images), cfg.batch_size, generator=generator):
                x = self._input(images[idx].to(self.device))
                b = x.shape[0]
                mask = perlin_masks(b, size, generator).to(self.device)
                loss = self._object_step(x, mask, generator)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            bar.update(1)
            bar.set_postfix(stage="object", loss=f"{loss.item():.3g}")

    def _object_step(self, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        """One step of the object-specific stage on clean images ``x`` and Perlin ``mask``."""
        cfg, vq = self.config, self.vq
        b = x.shape[0]

        def strength() -> Tensor:
            return torch.rand(b, generator=generator) * (1 - cfg.strength_min) + cfg.strength_min

        def per_image(flag: Tensor) -> Tensor:
            return flag.view(b, 1, 1, 1).to(self.device)

        with torch.no_grad():
            enc = vq.encode(x)
            q_lo, q_hi = enc["q_lo"], enc["q_hi"]
            m_lo = downsample_mask(mask, tuple(q_lo.shape[-2:]))
            m_hi = downsample_mask(mask, tuple(q_hi.shape[-2:]))
            # per image: anomalies on both levels, or on F_lo only, or on F_hi only
            both = per_image(torch.randint(0, 2, (b,), generator=generator).float())
            lo_only = per_image(torch.randint(0, 2, (b,), generator=generator).float())
            hi_only = 1 - lo_only
            # each variant is drawn only where it is used (the masks select the images)
            anom_lo = distant_code_anomalies(
                enc["z_lo"], q_lo, vq.vq_lo.codebook, m_lo * (both + (1 - both) * lo_only), strength(), generator
            )
            # F_hi recomputed from the anomalous Q_lo, then quantised and altered itself ("both")
            z_hi_from_anom = vq.pre_vq_hi(torch.cat([enc["enc_hi"], vq.upsample_lo(anom_lo)], 1))
            q_hi_from_anom, _ = vq.vq_hi(z_hi_from_anom)
            s_hi = strength()
            anom_hi_both = distant_code_anomalies(
                z_hi_from_anom, q_hi_from_anom, vq.vq_hi.codebook, m_hi * both, s_hi, generator
            )
            anom_hi_only = distant_code_anomalies(
                enc["z_hi"], q_hi, vq.vq_hi.codebook, m_hi * (1 - both) * hi_only, s_hi, generator
            )
            feat_hi = both * anom_hi_both + (1 - both) * (hi_only * anom_hi_only + lo_only * q_hi)
            feat_lo = both * anom_lo + (1 - both) * (hi_only * q_lo + lo_only * anom_lo)
            size = tuple(mask.shape[-2:])
            gt_lo = F.interpolate(m_lo, size=size, mode="nearest")
            gt_hi = F.interpolate(m_hi, size=size, mode="nearest")
            target = both * gt_lo + (1 - both) * (lo_only * gt_lo + hi_only * gt_hi)
            if cfg.image_anomaly_share > 0:
                # these samples carry an image-space anomaly instead: the quantised features of the
                # pasted image, the pixel mask as target; restoration targets stay the clean image's
                pasted = per_image((torch.rand(b, generator=generator) < cfg.image_anomaly_share).float())
                if bool(pasted.any()):
                    enc_a = vq.encode(self._input(paste_texture_anomalies(self._input(x), mask, generator)))
                    feat_lo = pasted * enc_a["q_lo"] + (1 - pasted) * feat_lo
                    feat_hi = pasted * enc_a["q_hi"] + (1 - pasted) * feat_hi
                    target = pasted * mask + (1 - pasted) * target
            recon_gen = vq.decode(feat_lo, feat_hi)

        f_lo, f_hi, r_lo, r_hi = self._restore(feat_lo, feat_hi)
        recon_obj = self.object_decoder(torch.cat([vq.upsample_lo(r_lo), r_hi], 1))
        seg = self._segmenter_probs(recon_obj.detach(), recon_gen)
        return (
            focal_loss(seg, target)
            + F.mse_loss(f_hi, q_hi) + F.mse_loss(f_lo, q_lo)
            + 10 * F.mse_loss(recon_obj, x)
        )

    def _train_upsampler(self, images: Tensor, generator: torch.Generator, bar: Any) -> None:
        cfg = self.config
        self._freeze(self.vq, self.restrict_hi, self.restrict_lo, self.object_decoder, self.segmenter)
        self.upsampler.train()
        opt = torch.optim.Adam(self.upsampler.parameters(), lr=cfg.lr)
        milestones = (int(0.8 * cfg.upsample_epochs), int(0.9 * cfg.upsample_epochs))
        size = tuple(images.shape[-2:])
        for epoch in range(cfg.upsample_epochs):
            if epoch in milestones:
                for group in opt.param_groups:
                    group["lr"] *= 0.2
            for idx in batches(len(images), cfg.batch_size, generator=generator):
                clean = images[idx]
                mask = perlin_masks(clean.shape[0], size, generator)
                x = self._input(paste_colour_anomalies(clean, mask, generator).to(self.device))
                mask = mask.to(self.device)
                with torch.no_grad():
                    seg, recon_obj, recon_gen = self._segment(x)
                refined = torch.softmax(self.upsampler(torch.cat([recon_obj, recon_gen, seg], 1)), 1)
                loss = focal_loss(refined, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            bar.update(1)
            bar.set_postfix(stage="upsample", loss=f"{loss.item():.3g}")
        self.upsampler.eval()
        self.upsampler.requires_grad_(False)

    # -- scoring --------------------------------------------------------------------------
    def _diagnostics(self, images: Tensor) -> dict[str, Tensor]:
        """``coarse``: the anomaly detection module's output before the upsampling module;
        ``reconstruction_gap``: mean absolute difference of the object-specific and the general
        reconstruction, the contrast the anomaly detection module is meant to read."""
        seg, recon_obj, recon_gen = self._segment(self._input(images))
        return {"coarse": seg[:, 1:2], "reconstruction_gap": (recon_obj - recon_gen).abs().mean(1, keepdim=True)}

    def _score(self, images: Tensor) -> Tensor:
        x = self._input(images)
        seg, recon_obj, recon_gen = self._segment(x)
        if self.config.output == "coarse":
            return seg[:, 1:2]
        refined = torch.softmax(self.upsampler(torch.cat([recon_obj, recon_gen, seg], 1)), 1)
        return refined[:, 1:2]


create_dsr = trained_factory(DSRMasker, DSRConfig, NAME)


@hookimpl
def register_maskers(register: Any) -> None:
    register(
        NAME,
        create_dsr,
        summary="DSR (Zavrtanik et al. 2022): VQ codebook + subspace restriction + anomaly segmentation",
        weights="trained-here (or file: the official VQ checkpoint)",
        options=[*DSRConfig.model_fields, "device"],
    )
