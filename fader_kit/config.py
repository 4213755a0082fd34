"""Configuration as pydantic models: validated on construction, hashable into cache keys.

A *profile* bundles every size and schedule that trades time for fidelity: ``smoke`` (seconds,
for tests), ``cpu`` (minutes on two cores) and ``paper`` (the paper's 256x256, 100 FADeR epochs).
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def digest(self) -> str:
        """Stable short hash of every field: the cache key of whatever this config produces."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class UNetConfig(_Frozen):
    """EAR U-Net (Sec. 4.1): D = len(widths) encoder and decoder blocks."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    in_channels: int = 3
    negative_slope: float = 0.2
    channels_last: bool = Field(
        True, description="NHWC memory layout: ~1.4x faster convolutions on CPU (oneDNN), same numbers up to rounding")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or any(w <= 0 for w in v):
            raise ValueError(f"widths must hold at least two positive ints, got {v}")
        return v

    @property
    def depth(self) -> int:
        return len(self.widths)


Schedule = Literal["fixed", "warmup", "sgdr", "cosine"]


class TrainConfig(_Frozen):
    """One optimisation run (EAR reconstructor or FADeR head)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    schedule: Schedule = "fixed"
    warmup_epochs: int = Field(1, ge=0)
    sgdr_period: int = Field(10, ge=1, description="epochs of the first SGDR cycle (T_0)")
    final_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine: lr at the last step = factor * lr")
    recalibrate_bn: bool = Field(
        True, description="re-estimate BatchNorm statistics over the training images after training")
    decoder_lr_factor: float = Field(0.1, ge=0, description="FADeR: decoder fine-tune lr = factor * lr")
    random_blobs: bool = Field(True, description="unite masker masks with random blobs while training")
    blob_coverage: float = Field(0.15, gt=0, lt=1, description="target fraction of pixels per blob mask")
    ranking_pairs: int | None = Field(
        4096, ge=1, description="FADeR: patch pairs sampled per image for Eq. 3 (None = all pairs)"
    )


class FaderConfig(_Frozen):
    """The FADeR head and how its prediction becomes skip-connection gates (Sec. 3)."""

    patch_size: int = Field(8, ge=1, description="m: mosaic scale = FADeR patch size (Sec. 3.2)")
    hidden: int = Field(128, ge=1)
    activation: Literal["relu", "gelu"] = "relu"
    head: Literal["mlp", "vit"] = "mlp"
    vit_dim: int = Field(64, ge=8)
    vit_depth: int = Field(2, ge=1)
    vit_heads: int = Field(4, ge=1)
    margin: float = Field(0.01, ge=0, description="xi of the ranking loss (Eq. 3)")
    masking: Literal["soft", "hard"] = "soft"
    hard_threshold: float = Field(0.5, gt=0, lt=1, description="hard masking: gate 0 where norm(l_hat) > t")
    normaliser: Literal["minmax", "sigmoid", "calibrated"] = Field(
        "minmax", description="l_hat -> gate: per-image min-max (paper), per-image sigmoid of the z-score, or "
        "'calibrated': a fixed scale from the head's predictions on normal training images, so a normal image "
        "keeps its skips open")
    calibration_quantile: float = Field(
        0.995, gt=0.5, lt=1, description="calibrated: gate = 1 up to this quantile q of l_hat on normal training "
        "patches, closing linearly to 0 at median + calibration_width * (q - median)")
    calibration_width: float = Field(2.0, gt=1, description="calibrated: where the gate reaches 0 (see above)")
    theta: Literal["nearest", "bilinear"] = "nearest"
    target: Literal["gated", "ungated"] = Field(
        "gated", description="Eq. 1 ground truth against the current gated reconstruction (paper, Fig. 4) or "
        "against the un-gated reconstruction of the same U-Net (what plain EAR would get wrong)")
    context: Literal["token", "neighbours"] = Field(
        "token", description="head input: the m x m patch alone (paper) or the 3m x 3m window around it")
    pseudo_anomalies: float = Field(
        0.0, ge=0, le=1, description="FADeR training: probability that a training image gets a foreign patch "
        "pasted in (not covered by M_B); the error target and the decoder's loss stay against the clean image")
    pseudo_area: float = Field(0.04, gt=0, lt=0.5, description="pseudo-anomalies: pasted area as a fraction of the image")
    pseudo_source: Literal["image", "procedural"] = Field(
        "image", description="what is pasted: a colour-shifted square of another training image, or a procedurally "
        "generated texture or shape (fader_kit.data.procedural: noise, gratings, flat and smooth fills, edges) -- "
        "content unlike the category's own, as DRAEM pastes foreign textures")
    focus: Literal["all", "unmasked"] = Field(
        "all", description="which patches teach and calibrate the head: every patch (paper) or only patches with no "
        "M_B pixel. A masked patch is already a flat mosaic cell (patch size = mosaic scale), so its error is the "
        "inpainting error and trivially the largest: with 'all' those pairs dominate Eq. 3 and the calibration "
        "quantile, and the head learns 'flat patch = high error' instead of 'this unmasked patch will not "
        "reconstruct'")
    gates: Literal["head", "open"] = Field(
        "head", description="'open' is the control: the head and the decoder are trained exactly as with 'head' but "
        "every gate is 1 (skips open) in training and at test, so what FADeR's decoder fine-tuning and BatchNorm "
        "re-estimation give without any gating can be told from what the head gives")

    @model_validator(mode="after")
    def _vit(self) -> "FaderConfig":
        if self.head == "vit" and self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim {self.vit_dim} must be divisible by vit_heads {self.vit_heads}")
        return self


# -- named head variants --------------------------------------------------------------------------
#: The head variants measured in docs/fader-head-experiments.md, as changes to a FaderConfig.
#: ``paper`` is FADeR exactly as the paper reads; the others go beyond it one change at a time
#: (``pseudo_calibrated`` is the one combination).  ``open_gates`` is the control (same training, skips
#: kept open); ``focused`` calibrates and ranks on unmasked patches only; ``pseudo_focused`` adds
#: pseudo-anomalies with the error taken against the un-gated reconstruction (what plain EAR would
#: get wrong on the pasted patch, a target that does not shrink as the head learns to close there);
#: ``procedural`` pastes procedurally generated content instead of the category's own (with the
#: paper's min-max gates), ``procedural_focused`` the same with calibrated gates.  Shared by ``fader-kit evaluate --fader-variant``
#: and the ``fader_head`` benchmark table.
HEAD_VARIANTS: dict[str, dict[str, object]] = {
    "paper": {},
    "calibrated": {"normaliser": "calibrated"},
    "ungated": {"target": "ungated"},
    "neighbours": {"context": "neighbours"},
    "pseudo": {"pseudo_anomalies": 1.0},
    "pseudo_calibrated": {"pseudo_anomalies": 1.0, "normaliser": "calibrated"},
    "open_gates": {"gates": "open"},
    "focused": {"normaliser": "calibrated", "focus": "unmasked"},
    "pseudo_focused": {"pseudo_anomalies": 1.0, "normaliser": "calibrated", "focus": "unmasked", "target": "ungated"},
    "procedural": {"pseudo_anomalies": 1.0, "pseudo_source": "procedural", "focus": "unmasked", "target": "ungated"},
    "procedural_focused": {"pseudo_anomalies": 1.0, "pseudo_source": "procedural", "normaliser": "calibrated",
                           "focus": "unmasked", "target": "ungated"},
}


#: The head ``fader-kit evaluate`` trains unless told otherwise, chosen on the development grid
#: (MPDD metal_plate and the four synthetic categories, four maskers; docs/fader-head-experiments.md):
#: of the head variants it came closest to the better of EAR and the masker alone (mean -0.006 image
#: AUROC against -0.048 for ``paper``; worst cell -0.032 against EAR, ``paper`` -0.177).  Its
#: calibrated gates rarely close, so it measured no different from the control ``open_gates``: the
#: head earned no gain of its own.  The paper's tables (``bench table2..5``) keep ``paper``.
DEFAULT_HEAD_VARIANT = "pseudo_focused"


def fader_variant(base: FaderConfig, name: str) -> FaderConfig:
    """``base`` (a profile's head configuration) with the changes of head variant ``name``."""
    if name not in HEAD_VARIANTS:
        raise ConfigError(f"unknown FADeR variant {name!r}; choose one of {', '.join(HEAD_VARIANTS)}")
    return FaderConfig(**{**base.model_dump(), **HEAD_VARIANTS[name]})


class Profile(_Frozen):
    """Everything that trades run time for fidelity, under one name."""

    name: str
    image_size: int = Field(ge=32)
    unet: UNetConfig
    ear: TrainConfig
    fader: TrainConfig
    fader_head: FaderConfig = FaderConfig()
    eval_batch_size: int = 8

    @model_validator(mode="after")
    def _sizes(self) -> "Profile":
        down = 2 ** self.unet.depth
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**depth = {down}")
        if self.image_size % self.fader_head.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by patch_size {self.fader_head.patch_size}"
            )
        return self


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        image_size=64,
        unet=UNetConfig(widths=(8, 16, 16, 32, 32)),
        ear=TrainConfig(epochs=2, batch_size=8, lr=2e-3),
        fader=TrainConfig(epochs=2, batch_size=8, lr=1e-3, ranking_pairs=512),
        fader_head=FaderConfig(patch_size=8, hidden=32),
    ),
    "cpu": Profile(
        name="cpu",
        image_size=128,
        unet=UNetConfig(widths=(16, 32, 64, 128, 128)),
        ear=TrainConfig(epochs=20, batch_size=4, lr=2e-3, schedule="cosine"),
        fader=TrainConfig(epochs=10, batch_size=8, lr=1e-3, ranking_pairs=2048),
        fader_head=FaderConfig(patch_size=8, hidden=64),
    ),
    "paper": Profile(
        name="paper",
        image_size=256,
        unet=UNetConfig(widths=(64, 128, 256, 512, 512)),
        ear=TrainConfig(epochs=300, batch_size=16, lr=1e-3, schedule="cosine", warmup_epochs=5),
        fader=TrainConfig(epochs=100, batch_size=16, lr=1e-4, schedule="sgdr", ranking_pairs=None),
        fader_head=FaderConfig(patch_size=8, hidden=256),
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
