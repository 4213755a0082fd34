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
        (:func:`~fader_kit.training.train_reconstructor`) or the FADeR head and decoder fine-tune
        (:func:`~fader_kit.training.train_fader`).  What a cache key of that artifact must hold: a
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
    the default head variant (``pseudo_focused``) needs.  Purely experimental switches live in
    :class:`HeadExperiment` and are set only through named variants (:mod:`fader_kit.variants`),
    so this stays the configuration a user tunes.
    """

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
    focus: Literal["all", "unmasked"] = Field(
        "all", description="which patches teach and calibrate the head: every patch (paper) or only patches with no "
        "M_B pixel. A masked patch is already a flat mosaic cell (patch size = mosaic scale), so its error is the "
        "inpainting error and trivially the largest: with 'all' those pairs dominate Eq. 3 and the calibration "
        "quantile, and the head learns 'flat patch = high error' instead of 'this unmasked patch will not "
        "reconstruct'")

    @model_validator(mode="before")
    @classmethod
    def _no_experiment(cls, data: object) -> object:
        """An experimental switch given to the public model gets a pointer to where it lives."""
        if cls is FaderConfig and isinstance(data, dict):
            given = sorted(set(data) & set(HeadExperiment.model_fields))
            if given:
                raise ValueError(
                    f"{', '.join(given)}: experimental head setting(s), not FaderConfig fields; choose a named "
                    "variant (fader_kit.variants.resolve(config, name), see list_variants()) or build an "
                    "ExperimentalFaderConfig")
        return data

    @model_validator(mode="after")
    def _vit(self) -> "FaderConfig":
        if self.head == "vit" and self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim {self.vit_dim} must be divisible by vit_heads {self.vit_heads}")
        return self

    @property
    def experiment(self) -> "HeadExperiment":
        """The experimental settings in force: the paper's behaviour for a plain FaderConfig."""
        return PAPER_EXPERIMENT

    def key_payload(self) -> dict[str, object]:
        """Exactly the settings that change a trained head (and its gates): what a cache key of the
        FADeR artifact must hold.  A field that the configured head never reads is left out, so
        changing it reuses the artifact; a plain config and an :class:`ExperimentalFaderConfig` that
        behave alike give equal payloads."""
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
        exp = self.experiment
        out.update(context=exp.context, gates=exp.gates)
        # later switches enter the key only when set, so every earlier head keeps its key
        for name in ("head_input", "score_input", "masked_gate", "gate_end"):
            if getattr(exp, name) != HeadExperiment.model_fields[name].default:
                out[name] = getattr(exp, name)
        if self.pseudo_anomalies > 0:
            out.update(pseudo_area=exp.pseudo_area, pseudo_source=exp.pseudo_source)
        return out


class HeadExperiment(_Frozen):
    """Switches beyond the paper that only named head variants set (:mod:`fader_kit.variants`).

    Each default is the paper's behaviour.  They are kept out of :class:`FaderConfig` because no
    table of the paper and no default needs them: they exist to measure an idea (a wider head input,
    procedurally generated pseudo-anomalies) or to control for one (``gates="open"``).
    """

    context: Literal["token", "neighbours"] = Field(
        "token", description="head input: the m x m patch alone (paper) or the 3m x 3m window around it")
    pseudo_area: float = Field(
        0.04, gt=0, lt=0.5, description="pseudo-anomalies: pasted area as a fraction of the image")
    pseudo_source: Literal["image", "procedural"] = Field(
        "image", description="what is pasted: a colour-shifted square of another training image, or a procedurally "
        "generated texture or shape (fader_kit.data.procedural: noise, gratings, flat and smooth fills, edges) -- "
        "content unlike the category's own, as DRAEM pastes foreign textures")
    gates: Literal["head", "open", "score"] = Field(
        "head", description="'open' is the control: the head and the decoder are trained exactly as with 'head' but "
        "every gate is 1 (skips open) in training and at test, so what FADeR's decoder fine-tuning and BatchNorm "
        "re-estimation give without any gating can be told from what the head gives. 'score': no learned head, "
        "l_hat is the masker's own score map (max over each patch), put through the normaliser (calibrated on the "
        "normal training images)")
    head_input: Literal["pixels", "stats", "encoder", "backbone"] = Field(
        "pixels", description="what the head reads per patch of I': its raw pixels (paper), seven statistics "
        "(mean and std of R, G, B and the gradient energy), the frozen U-Net encoder's feature map at the patch "
        "grid's resolution (pooled to the grid), or a frozen ImageNet CNN's features (fader_kit.backbones' offline "
        "default, EfficientNet-Lite0: its stride-8 and stride-16 stages resized to the grid); every input but "
        "'pixels' is standardised with the mean and std of the normal training patches")
    score_input: bool = Field(
        False, description="the head also reads the masker's continuous score at the patch (mean and max over the "
        "patch), standardised on the normal training patches: what the binary mask throws away below its threshold")
    masked_gate: Literal["head", "one"] = Field(
        "head", description="'one': the gate is forced to 1 on every patch with an M_B pixel, so the skips keep "
        "carrying the mosaic hint there and the gates only act on the patches the masker left")
    gate_end: Literal["spread", "threshold"] = Field(
        "spread", description="where the calibrated gates reach 0: at median + width * (quantile - median) of the "
        "normal patches' l_hat ('spread'), or at the masker's own threshold ('threshold', for gates='score': the "
        "gates close over the band of scores between the normal patches' quantile and the score at which the masker "
        "would have masked the pixel)")


#: The experimental settings of the paper's head (every default).
PAPER_EXPERIMENT = HeadExperiment()


class ExperimentalFaderConfig(FaderConfig):
    """A :class:`FaderConfig` with a :class:`HeadExperiment`: what a named variant with an
    experimental change resolves to.  It is a FaderConfig, so ``FaderModel``, ``train_fader``, the
    cache keys, checkpoints and the ONNX export take it unchanged; it dumps flat (the experiment's
    fields beside the head's), as every head configuration was saved before the split."""

    # The FieldInfo of HeadExperiment is the default (description and bounds included); mypy reads the
    # assignment of a FieldInfo to a typed field as a type error.
    context: Literal["token", "neighbours"] = HeadExperiment.model_fields["context"]  # type: ignore[assignment]
    pseudo_area: float = HeadExperiment.model_fields["pseudo_area"]  # type: ignore[assignment]
    pseudo_source: Literal["image", "procedural"] = HeadExperiment.model_fields["pseudo_source"]  # type: ignore[assignment]
    gates: Literal["head", "open", "score"] = HeadExperiment.model_fields["gates"]  # type: ignore[assignment]
    head_input: Literal["pixels", "stats", "encoder", "backbone"] = HeadExperiment.model_fields["head_input"]  # type: ignore[assignment]
    score_input: bool = HeadExperiment.model_fields["score_input"]  # type: ignore[assignment]
    masked_gate: Literal["head", "one"] = HeadExperiment.model_fields["masked_gate"]  # type: ignore[assignment]
    gate_end: Literal["spread", "threshold"] = HeadExperiment.model_fields["gate_end"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _gate_end_needs_calibration(self) -> "ExperimentalFaderConfig":
        if self.gate_end == "threshold" and self.normaliser != "calibrated":
            raise ValueError("gate_end='threshold' sets the end of the calibrated normaliser: it needs "
                             "normaliser='calibrated'")
        return self

    @property
    def experiment(self) -> HeadExperiment:
        return HeadExperiment(**{k: getattr(self, k) for k in HeadExperiment.model_fields})


def fader_config(data: dict[str, object]) -> FaderConfig:
    """A head configuration from its fields (a dump, a checkpoint's, a variant's), as the plain
    :class:`FaderConfig` unless an experimental field differs from the paper's: one configuration,
    one object, whichever way it was written (a dump from before the split loads too)."""
    public = {k: v for k, v in data.items() if k not in HeadExperiment.model_fields}
    experiment = {k: v for k, v in data.items() if k in HeadExperiment.model_fields}
    if HeadExperiment(**experiment) == PAPER_EXPERIMENT:
        return FaderConfig(**public)
    return ExperimentalFaderConfig(**data)


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
