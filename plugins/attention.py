"""``dino_vit`` and ``plain_vit``: zero-shot masks from a ViT's last-layer CLS attention.

One piece of code, two configurations (the paper's Table 2 compares them): the self-supervised
DINO ViT (``vit_small_patch16_224.dino``; ``..patch8..`` works too) and a supervised ViT
(``vit_base_patch16_224.augreg_in21k``).  Any timm ViT with a class token and a standard
``qkv`` attention can be named instead.

The recipe is DINO's (Caron et al. 2021, Fig. 3 / the ``visualize_attention`` script):

1. resize the image to the size the model expects and normalise with its mean/std;
2. take the last block's attention of the CLS query over the patch keys,
   ``softmax(q_cls k^T / sqrt(d))`` restricted to the patch tokens (register / other prefix
   tokens excluded).  timm's fused attention never materialises these weights, so they are
   recomputed from the block's own ``qkv`` projection on the block's (normalised) input, which
   a forward pre-hook captures; the forward pass stops right there;
3. aggregate the heads: ``mean`` (default), or ``union`` of per-head masks;
4. keep the smallest set of patches whose attention sums to at least ``mass_fraction`` (0.6) of
   the total -- :func:`top_mass_mask` -- and upsample that patch mask *nearest* to the image.

``score_map`` is the head-aggregated attention per patch, scaled so that a uniform attention is
1.0 (attention share x number of patches), upsampled *bilinearly* by default
(``score_upsample="nearest"`` to match the mask's blocks).  Higher = more attended = more
suspicious.  ``mask`` applies the top-mass rule, not a fixed threshold.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import Masker, MaskerInfo, check_images
from fader_kit.maskers.registry import masker_config
from fader_kit.maskers.weights import load_timm_model

DINO_MODEL = "vit_small_patch16_224.dino"
PLAIN_MODEL = "vit_base_patch16_224.augreg_in21k"


class AttentionMaskerConfig(BaseModel):
    """Everything that decides an attention mask; two presets: ``dino_vit`` and ``plain_vit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("dino_vit", description="masker name reported in MaskerInfo")
    model: str = Field(DINO_MODEL, description="timm ViT name (arch.tag)")
    weights: str | None = Field(None, description="checkpoint file or folder; None: $FADER_KIT_WEIGHTS / hub")
    allow_random_weights: bool = False
    offline: bool | None = Field(None, description="None: HF_HUB_OFFLINE, or offline when the hub does not answer")
    device: str | None = None
    mass_fraction: float = Field(0.6, gt=0, le=1, description="keep the top patches holding this share of attention")
    heads: Literal["mean", "union"] = "mean"
    input_size: int | None = Field(None, ge=8, description="side the model sees; None: the model's pretrained size")
    mean: tuple[float, float, float] | None = Field(None, description="None: the model's pretrained_cfg mean")
    std: tuple[float, float, float] | None = Field(None, description="None: the model's pretrained_cfg std")
    interpolation: Literal["bilinear", "bicubic"] | None = Field(None, description="resize to input_size; None: from pretrained_cfg")
    score_upsample: Literal["bilinear", "nearest"] = "bilinear"
    batch_size: int = Field(16, ge=1, description="images per forward pass")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"std must be positive, got {v}")
        return v


# -- the two pieces of maths -----------------------------------------------------------------------
def top_mass_mask(weights: Tensor, fraction: float) -> Tensor:
    """Bool mask over the last axis: the smallest set of entries holding ``fraction`` of the mass.

    Entries are taken largest first until their sum reaches ``fraction * total``; an entry is kept
    when the mass of the larger entries before it is still below that target.  Ties are broken by
    position (stable sort).  E.g. ``[0.5, 0.3, 0.15, 0.05]`` with 0.6 keeps the first two.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    weights = weights.clamp_min(0)
    ordered, order = torch.sort(weights, dim=-1, descending=True, stable=True)
    before = ordered.cumsum(dim=-1) - ordered
    keep_sorted = before < fraction * weights.sum(dim=-1, keepdim=True)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class _Captured(Exception):
    """Raised by the pre-hook to end the forward pass once the last block's input is known."""


def cls_patch_attention(model: nn.Module, pixels: Tensor) -> Tensor:
    """Last-block attention of the CLS query over the patch tokens, ``[B, heads, P]``.

    ``pixels`` are already resized and normalised.  Rows are the softmax over *all* keys
    (prefix tokens included), restricted afterwards to the ``P`` patch keys, as DINO does.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(f"{type(model).__name__} has no transformer blocks: need a timm VisionTransformer")
    attn = getattr(blocks[-1], "attn", None)
    if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(attn, "num_heads"):
        raise TypeError(
            f"the last block's attention ({type(attn).__name__}) has no fused qkv projection; "
            "use a timm VisionTransformer (vit_*)"
        )
    if getattr(model, "cls_token", None) is None:
        raise TypeError(f"{type(model).__name__} has no class token, so there is no CLS attention")
    captured: list[Tensor] = []

    def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])
        raise _Captured

    handle = attn.register_forward_pre_hook(grab)
    try:
        model.forward_features(pixels)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the last attention block was never called")
    x = captured[0]  # [B, N, C]: norm1 output, the attention's input
    b, n, _ = x.shape
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", attn.qkv.out_features // (3 * heads))
    q, k, _v = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)  # Identity unless the model uses qk-norm
    scale = getattr(attn, "scale", head_dim**-0.5)
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # [B, H, 1, N]
    weights = logits.softmax(dim=-1)[:, :, 0]
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return weights[:, :, prefix:]


# -- the masker -----------------------------------------------------------------------------------
class AttentionMasker(Masker):
    """Zero-shot masker from a timm ViT's last-layer CLS attention (see the module docstring).

    Build it from a config (the model is loaded through :func:`fader_kit.maskers.weights.load_timm_model`)
    or pass ``model=`` (any timm ``VisionTransformer``; then ``weights_source`` labels it).
    """

    def __init__(
        self,
        config: AttentionMaskerConfig | None = None,
        *,
        model: nn.Module | None = None,
        weights_source: str = "given",
    ) -> None:
        self.config = config or AttentionMaskerConfig()
        if model is None:
            create_kwargs: dict[str, Any] = {"num_classes": 0}
            native = _native_size(self.config.model)
            if self.config.input_size is not None and self.config.input_size != native:
                create_kwargs["img_size"] = self.config.input_size
            model, weights_source = load_timm_model(
                self.config.model,
                weights=self.config.weights,
                allow_random_weights=self.config.allow_random_weights,
                offline=self.config.offline,
                **create_kwargs,
            )
        self.model = model.eval().requires_grad_(False)
        self.weights_source = weights_source
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        img_size = model.patch_embed.img_size
        self.input_size = int(self.config.input_size or (img_size[0] if isinstance(img_size, (tuple, list)) else img_size))
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of the patch size {self.patch_size}")
        self.mean = tuple(self.config.mean or cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(self.config.std or cfg.get("std", (0.229, 0.224, 0.225)))
        interp = self.config.interpolation or cfg.get("interpolation", "bicubic")
        self.interpolation = interp if interp in ("bilinear", "bicubic") else "bicubic"
        self.threshold = None
        if self.config.device is not None:
            self.to(self.config.device)

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(
            name=self.config.name,
            weights=self.weights_source,
            input_size=self.input_size,
            details={
                "model": self.config.model,
                "mass_fraction": self.config.mass_fraction,
                "heads": self.config.heads,
                "patch_size": self.patch_size,
                "prefix_tokens": int(getattr(self.model, "num_prefix_tokens", 1)),
                "score_upsample": self.config.score_upsample,
            },
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "AttentionMasker":
        self.model.to(device)
        return self

    # -- computation ------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """Resize to the model's input size and normalise with its mean/std, on the model's device."""
        x = check_images(images).to(self.device, torch.float32)
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode=self.interpolation, align_corners=False, antialias=True)
            x = x.clamp(0, 1)  # bicubic overshoots
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def head_attention(self, images: Tensor) -> Tensor:
        """CLS-to-patch attention per head on the patch grid, ``[B, heads, h, w]``."""
        grid = self.input_size // self.patch_size
        parts = [
            cls_patch_attention(self.model, self.preprocess(images[i : i + self.config.batch_size]))
            for i in range(0, images.shape[0], self.config.batch_size)
        ]
        att = torch.cat(parts)
        if att.shape[-1] != grid * grid:
            raise RuntimeError(f"expected {grid}x{grid} patch tokens, got {att.shape[-1]}")
        return att.reshape(att.shape[0], att.shape[1], grid, grid)

    def _aggregate(self, att: Tensor) -> tuple[Tensor, Tensor]:
        """(scores, keep) on the patch grid, ``[B, 1, h, w]`` each, from per-head attention."""
        b, heads, h, w = att.shape
        flat = att.reshape(b, heads, h * w)
        share = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.config.heads == "mean":
            mean = share.mean(dim=1)
            keep = top_mass_mask(mean, self.config.mass_fraction)
            scores = mean
        else:  # union of per-head masks; the score is the strongest head's share
            keep = top_mass_mask(share, self.config.mass_fraction).any(dim=1)
            scores = share.amax(dim=1)
        scores = scores * (h * w)  # uniform attention -> 1.0
        return scores.reshape(b, 1, h, w), keep.reshape(b, 1, h, w)

    def score_map(self, images: Tensor) -> Tensor:
        scores, _ = self._aggregate(self.head_attention(images))
        size = images.shape[-2:]
        if self.config.score_upsample == "bilinear":
            up = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        else:
            up = F.interpolate(scores, size=size, mode="nearest")
        return up.to(images.device)

    def mask(self, images: Tensor) -> Tensor:
        """The DINO top-mass patches, nearest-upsampled to the image (no threshold involved)."""
        _, keep = self._aggregate(self.head_attention(images))
        up = F.interpolate(keep.float(), size=images.shape[-2:], mode="nearest")
        return (up > 0.5).to(images.device)

    # -- persistence: the backbone is not fitted state ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config and weights source only: the backbone comes from its source, not from here."""
        return {"threshold": self.threshold, "config": self.config.model_dump(mode="json"), "weights": self.weights_source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("config") or {}).get("model")
        if saved is not None and saved != self.config.model:
            raise ValueError(f"saved state is for model {saved!r}, this masker uses {self.config.model!r}")
        self.threshold = state.get("threshold")


def _native_size(name: str) -> int | None:
    """The input side of timm model ``name``'s pretrained config, without building it."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        return None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


# -- the two configurations -----------------------------------------------------------------------
def _build(preset: dict[str, Any], options: dict[str, Any]) -> AttentionMasker:
    options = dict(options)
    options.pop("seed", None)  # deterministic: nothing to seed
    options.pop("name", None)
    if options.get("weights") is not None:
        options["weights"] = str(options["weights"])
    if options.get("device") is not None:
        options["device"] = str(options["device"])
    return AttentionMasker(masker_config(AttentionMaskerConfig, preset["name"], {**preset, **options}))


#: what the two factories accept (the preset sets the name); the registry refuses anything else
#: with one MaskerOptionError naming the option
_ATTENTION_OPTIONS = [k for k in AttentionMaskerConfig.model_fields if k != "name"]


def make_dino_vit(**options: Any) -> AttentionMasker:
    """``dino_vit``: self-supervised DINO ViT-S/16 (``model="vit_small_patch8_224.dino"`` for /8)."""
    return _build({"name": "dino_vit", "model": DINO_MODEL}, options)


def make_plain_vit(**options: Any) -> AttentionMasker:
    """``plain_vit``: supervised ImageNet-21k ViT-B/16, same attention rule."""
    return _build({"name": "plain_vit", "model": PLAIN_MODEL}, options)


@hookimpl
def register_maskers(register) -> None:
    register(
        "dino_vit",
        make_dino_vit,
        summary="DINO ViT last-layer CLS attention, top 60% attention mass (zero-shot)",
        weights=f"hub:{DINO_MODEL}",
        options=_ATTENTION_OPTIONS,
    )
    register(
        "plain_vit",
        make_plain_vit,
        summary="supervised ViT last-layer CLS attention, top 60% attention mass (zero-shot)",
        weights=f"hub:{PLAIN_MODEL}",
        options=_ATTENTION_OPTIONS,
    )
