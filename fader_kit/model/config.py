"""Configuration as pydantic models: validated on construction, hashable into cache keys.

A *profile* bundles every size and schedule that trades time for fidelity: ``smoke`` (seconds,
for tests), ``cpu`` (minutes on two cores) and ``paper`` (the paper's 256x256, 100 FADeR epochs).
"""
from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fader_kit.model.config_legacy import LEGACY_OPTIONAL, from_legacy, is_legacy, to_legacy
from fader_kit.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: fields added after results were first stored: they enter :meth:`digest` only when set away from
    #: their default, so every configuration that existed before keeps its digest (and its rows theirs)
    _DIGEST_LATER: ClassVar[tuple[str, ...]] = ()

    def digest_payload(self) -> dict[str, object]:
        """The fields :meth:`digest` hashes, nested configurations by their own payload."""
        dumped = self.model_dump(mode="json")
        out: dict[str, object] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name in self._DIGEST_LATER and value == field.default:
                continue
            out[name] = value.digest_payload() if isinstance(value, _Frozen) else dumped[name]
        return out

    def digest(self) -> str:
        """Stable short hash of every field: the cache key of whatever this config produces."""
        text = json.dumps(self.digest_payload(), sort_keys=True)
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

    def key_payload(self) -> dict[str, object]:
        """The settings that change a trained U-Net: every field.  ``channels_last`` changes only
        the memory layout, but the convolutions then round differently (measured: up to ~1e-8 on a
        smoke U-Net's output, and training compounds it), so the numbers are not bit-identical and
        it stays in the key."""
        return self.model_dump(mode="json")


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

    def key_payload(self, role: Literal["ear", "fader"]) -> dict[str, object]:
        """Exactly the settings that change what this run trains, for ``role``: the EAR U-Net
        (:func:`~fader_kit.model.training.train_reconstructor`) or the FADeR head and decoder fine-tune
        (:func:`~fader_kit.model.training.train_fader`).  What a cache key of that artifact must hold: a
        field the role or the schedule never reads is left out, so changing it reuses the artifact."""
        if role not in ("ear", "fader"):
            raise ConfigError(f"unknown training role {role!r}; use 'ear' or 'fader'")
        out: dict[str, object] = {
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "schedule": self.schedule,
            "recalibrate_bn": self.recalibrate_bn, "random_blobs": self.random_blobs,
        }
        if self.schedule in ("warmup", "cosine"):
            out["warmup_epochs"] = self.warmup_epochs
        if self.schedule == "cosine":
            out["final_lr_factor"] = self.final_lr_factor
        if self.schedule == "sgdr":
            out["sgdr_period"] = self.sgdr_period
        if self.random_blobs:
            out["blob_coverage"] = self.blob_coverage
        if role == "fader":
            out.update(decoder_lr_factor=self.decoder_lr_factor, ranking_pairs=self.ranking_pairs)
        return out


class FaderConfig(_Frozen):
    """The FADeR head and how its prediction becomes skip-connection gates (Sec. 3).

    Holds the paper's choices, the alternatives its ablation (Table 3) compares, and the options
    the default head variant (``pseudo_focused``) needs.  What the head reads and how its l_hat
    becomes gates are *strategies* named by :attr:`head_input` and :attr:`gates`, registered in
    :mod:`fader_kit.model.head_registry` (a plugin may add its own, docs/writing-a-head.md).  A head
    written with the old flat fields (``context``, ``score_input``, ``masked_gate``, ``gate_end``,
    string ``head_input`` / ``gates``) loads as the same head (:mod:`fader_kit.model.config_legacy`).
    """

    _DIGEST_LATER: ClassVar[tuple[str, ...]] = ("head_input", "gates", "pseudo_area", "pseudo_source")

    patch_size: int = Field(8, ge=1, description="m: mosaic scale = FADeR patch size (Sec. 3.2)")
    hidden: int = Field(128, ge=1, description="width of the MLP head's hidden layer (head='mlp')")
    activation: Literal["relu", "gelu"] = "relu"
    head: Literal["mlp", "vit"] = Field("mlp", description="per-patch MLP (paper) or the ViT ablation (Table 3)")
    vit_dim: int = Field(64, ge=8, description="head='vit': token width")
    vit_depth: int = Field(2, ge=1, description="head='vit': transformer blocks")
    vit_heads: int = Field(4, ge=1, description="head='vit': attention heads")
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
    target: Literal["gated", "ungated", "ear"] = Field(
        "gated", description="Eq. 1 ground truth against the current gated reconstruction (paper, Fig. 4), "
        "against the un-gated reconstruction of the same U-Net while its decoder is fine-tuned ('ungated'), or "
        "against a frozen copy of the plain EAR U-Net in eval mode ('ear': exactly the error plain EAR makes)")
    pseudo_anomalies: float = Field(
        0.0, ge=0, le=1, description="FADeR training: probability that a training image gets a foreign patch "
        "pasted in (not covered by M_B); the error target and the decoder's loss stay against the clean image")
    pseudo_area: float = Field(
        0.04, gt=0, lt=0.5, description="pseudo-anomalies: pasted area as a fraction of the image")
    pseudo_source: Literal["image", "procedural"] = Field(
        "image", description="what is pasted: a colour-shifted square of another training image, or a procedurally "
        "generated texture or shape (fader_kit.data.procedural)")
    focus: Literal["all", "unmasked"] = Field(
        "all", description="which patches teach and calibrate the head: every patch (paper) or only patches with no "
        "M_B pixel. A masked patch is already a flat mosaic cell (patch size = mosaic scale), so its error is the "
        "inpainting error and trivially the largest: with 'all' those pairs dominate Eq. 3 and the calibration "
        "quantile, and the head learns 'flat patch = high error' instead of 'this unmasked patch will not "
        "reconstruct'")
    head_input: tuple[str, ...] = Field(
        ("pixels",), min_length=1, description="what the head reads per patch: registered input strategies, their "
        "tokens concatenated in this order (core: 'pixels', the paper's m x m patch; 'encoder', the frozen U-Net "
        "encoder's feature at the patch); `fader-kit variants --all` lists the variants that use others")
    gates: tuple[str, ...] = Field(
        ("head",), min_length=1, description="how l_hat becomes skip gates: a registered gate strategy, then any "
        "modifiers (core: 'head', the learned head through the normaliser and masking; 'open', the control that "
        "keeps every gate at 1)")

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: object) -> object:
        """A head written with the old flat fields becomes the same head in strategy names; a list of
        names (as JSON writes it) is the tuple it was, strict validation included."""
        if not isinstance(data, dict):
            return data
        if is_legacy(data):
            return from_legacy(data)
        return {k: tuple(v) if k in ("head_input", "gates") and isinstance(v, list) else v for k, v in data.items()}

    @model_validator(mode="after")
    def _vit(self) -> "FaderConfig":
        if self.head == "vit" and self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim {self.vit_dim} must be divisible by vit_heads {self.vit_heads}")
        return self

    def key_payload(self) -> dict[str, object]:
        """Exactly the settings that change a trained head (and its gates): what a cache key of the
        FADeR artifact must hold.  A field that the configured head never reads is left out, so
        changing it reuses the artifact.  A head the old flat fields could describe keeps their
        payload byte for byte (:mod:`fader_kit.model.config_legacy`), so cache keys survive the rename."""
        out: dict[str, object] = {
            "patch_size": self.patch_size, "activation": self.activation, "head": self.head, "margin": self.margin,
            "masking": self.masking, "normaliser": self.normaliser, "theta": self.theta, "target": self.target,
            "pseudo_anomalies": self.pseudo_anomalies, "focus": self.focus,
        }
        if self.head == "vit":
            out.update(vit_dim=self.vit_dim, vit_depth=self.vit_depth, vit_heads=self.vit_heads)
        else:
            out["hidden"] = self.hidden
        if self.masking == "hard":
            out["hard_threshold"] = self.hard_threshold
        if self.normaliser == "calibrated":
            out.update(calibration_quantile=self.calibration_quantile, calibration_width=self.calibration_width)
        old = to_legacy(self.head_input, self.gates)
        if old is None:
            out.update(head_input=list(self.head_input), gates=list(self.gates))
        else:
            out.update(context=old["context"], gates=old["gates"])
            # later switches entered the key only when set, so every earlier head kept its key
            out.update({k: old[k] for k, default in LEGACY_OPTIONAL.items() if old[k] != default})
        if self.pseudo_anomalies > 0:
            out.update(pseudo_area=self.pseudo_area, pseudo_source=self.pseudo_source)
        return out


def fader_config(data: dict[str, object]) -> FaderConfig:
    """A head configuration from its fields (a dump, a checkpoint's, a variant's), written either
    way: in strategy names or with the old flat fields (see :mod:`fader_kit.model.config_legacy`)."""
    return FaderConfig(**data)


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
