"""``detector.json``, the manifest of a detector folder: how the detector was built (its settings),
what it was trained on, its format version and the digests of the folder's files.

Every model here is validated strictly and bounds every size the loader builds from (``MAX_*``), so a
folder from another machine cannot ask for more than any profile needs; the errors name the file and
the field (:func:`validate_file`).  :mod:`fader_kit.deploy.detector` builds the detector they describe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fader_kit.errors import ConfigError, ModelDirError, UserError
from fader_kit.maskers.interfaces import MaskerInfo
from fader_kit.deploy.modeldir import canonical_json
from fader_kit.deploy.score_kinds import LEGACY_SCORE, ScoreKind, ScoreName, score_kind
from fader_kit.version import __version__

#: 3: the score kind in the settings, fusion scales in the calibration, no model file for the masker
#: alone; 2 (still read): every file digested, detector.json included; 1 (still read): the two tensor
#: files only.  Folders before 3 are ``fader`` detectors.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

#: Bounds on what a detector folder may ask the loader to build: far beyond any profile (the paper's is
#: 256 px, widths up to 512), far below what would exhaust a machine before the first image.
MAX_IMAGE_SIZE = 2048
MAX_WIDTH = 4096
MAX_DEPTH = 8
MAX_KERNEL = 255
MAX_BATCH = 4096
#: Head sizes: the MLP's hidden width, the ViT ablation's width, depth and heads.
MAX_HEAD = {"patch_size": 256, "hidden": 65536, "vit_dim": 4096, "vit_depth": 64, "vit_heads": 64}
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"


def first_error(exc: ValidationError, field: str = "field ") -> str:
    """``field a.b: what is wrong`` for the first problem pydantic found, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).splitlines()[0].removeprefix("Value error, ")
    return (f"{field}{where}: " if where else "") + msg


def error_reason(exc: Exception) -> str:
    """One line saying why ``exc`` was raised (a pydantic error: its first problem)."""
    if isinstance(exc, ValidationError):
        return first_error(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if isinstance(exc, (KeyError, TypeError)) or not text else text


class DetectorSettings(BaseModel):
    """How the detector was built: enough to rebuild its modules and to repeat the fit.  The
    validators bound every size the loader builds from (see ``MAX_*``)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    profile: str = Field(max_length=100)
    image_size: int = Field(ge=16, le=MAX_IMAGE_SIZE)
    masker: str = Field(pattern=_NAME)
    masker_options: dict[str, Any] = Field(default_factory=dict, max_length=64)
    fader_variant: str = Field(max_length=100)
    fader_config: dict[str, Any]
    unet_config: dict[str, Any]
    seed: int = Field(ge=-(1 << 63), lt=1 << 64)
    ear_masks: Literal["blobs", "masker"] = "blobs"
    holdout: float = Field(gt=0, lt=1)
    false_alarm_rate: float = Field(gt=0, lt=1)
    kernel_size: int = Field(21, ge=1, le=MAX_KERNEL)
    batch_size: int = Field(16, ge=1, le=MAX_BATCH)
    score: ScoreName = Field(LEGACY_SCORE, description="what the detector scores with (fader_kit.deploy.score_kinds); "
                             "absent in folders written before score kinds")

    @property
    def kind(self) -> ScoreKind:
        return score_kind(self.score)

    @field_validator("masker_options")
    @classmethod
    def _plain_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not isinstance(value, (str, int, float, bool, type(None))) or (isinstance(value, str) and len(value) > 4096):
                raise ValueError(f"option {key!r} must be a string, number, boolean or null")
        return v

    @field_validator("unet_config")
    @classmethod
    def _unet(cls, v: dict[str, Any]) -> dict[str, Any]:
        from fader_kit.model.config import UNetConfig

        try:
            cfg = UNetConfig.model_validate_json(canonical_json(v), strict=True)
        except ValidationError as exc:
            raise ValueError(first_error(exc, "")) from None
        if cfg.in_channels != 3 or not 2 <= cfg.depth <= MAX_DEPTH or max(cfg.widths) > MAX_WIDTH:
            raise ValueError(f"widths must hold 2 to {MAX_DEPTH} widths of at most {MAX_WIDTH} channels for RGB "
                             f"input, got widths {list(cfg.widths)} and {cfg.in_channels} input channels")
        return v

    @field_validator("fader_config")
    @classmethod
    def _head(cls, v: dict[str, Any]) -> dict[str, Any]:
        from fader_kit.model.config import FaderConfig, fader_config

        try:
            cfg = fader_config(dict(v))
            # again without type coercion (a float where an int belongs is refused, not rounded)
            FaderConfig.model_validate_json(canonical_json(v), strict=True)
        except ValidationError as exc:
            raise ValueError(first_error(exc, "")) from None
        except (TypeError, ValueError, UserError) as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        for key, top in MAX_HEAD.items():
            if getattr(cfg, key) > top:
                raise ValueError(f"{key} {getattr(cfg, key)} is above {top}")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "DetectorSettings":
        down = 2 ** len(self.unet_config["widths"])
        patch = self.fader_config.get("patch_size", 8)
        if self.image_size % down or self.image_size % patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**depth = {down} and by the head's "
                             f"patch_size {patch}")
        return self


class TrainingSummary(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    normal_folder: str
    n_images: int = Field(ge=0)
    n_train: int = Field(ge=0)
    n_holdout: int = Field(ge=0)
    holdout_files: list[str]
    device: str
    seconds: dict[str, float]
    masker_info: dict[str, Any]
    created_at: str


class Manifest(BaseModel):
    """``detector.json``."""

    model_config = ConfigDict(frozen=True)

    format: str
    format_version: int
    created_by: str
    settings: DetectorSettings
    training: TrainingSummary
    environment: dict[str, str] = Field(default_factory=dict)
    sha256: dict[str, str] = Field(default_factory=dict)


class MaskerFile(BaseModel):
    """``masker.json``: the masker's name, its info and its state (tensors by reference)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    masker: str = Field(pattern=_NAME)
    info: MaskerInfo
    state: dict[str, Any]


def check_version(raw: dict[str, Any], folder: Path) -> int:
    """The format version of a parsed ``detector.json``, or a ModelDirError saying what to do."""
    version = raw.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        from fader_kit.deploy.modeldir import shown

        raise ModelDirError(
            f"{folder} holds detector format version {shown(version)} (written by {shown(raw.get('created_by', 'unknown'))}); "
            f"this fader-kit {__version__} reads versions {', '.join(map(str, READABLE_VERSIONS))}: "
            + ("upgrade fader-kit to load it" if newer else f"refit it with fader-kit {__version__} (fader-kit fit)"))
    return int(version)


def validate_file(model: type[BaseModel], raw: Any, path: Path) -> Any:
    """``model`` validated strictly (no type coercion) from ``raw``, read from ``path``; the first
    problem is one ModelDirError naming the file and the field."""
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise ModelDirError(f"{path}: {first_error(exc)}") from None


def validate_manifest(raw: dict[str, Any], folder: Path) -> Manifest:
    return validate_file(Manifest, raw, folder / "detector.json")


def read_manifest(folder: Path) -> Manifest:
    """``detector.json`` of ``folder``, its format, version and fields checked, with errors naming the
    file (its digests are checked by :meth:`Detector.load`, which reads the other files)."""
    from fader_kit.deploy.modeldir import read_manifest_file

    raw = read_manifest_file(folder)
    check_version(raw, folder)
    return validate_manifest(raw, folder)


def raw_kind(raw: dict[str, Any], folder: Path, version: int) -> ScoreKind:
    """The score kind a parsed ``detector.json`` names (before its fields are validated: it decides
    which files the folder must hold); folders before format version 3 are ``fader`` detectors."""
    from fader_kit.deploy.modeldir import MANIFEST, shown

    settings = raw.get("settings")
    if not isinstance(settings, dict) or "score" not in settings:
        return score_kind(LEGACY_SCORE)
    try:
        kind = score_kind(settings["score"])
    except ConfigError:
        raise ModelDirError(f"{folder / MANIFEST}: field settings.score: {shown(settings['score'])} is not a score "
                            f"kind (those are: masker, ear, fader, fused)") from None
    if version < 3 and kind.name != LEGACY_SCORE:
        raise ModelDirError(f"{folder / MANIFEST}: field settings.score: format version {version} folders hold "
                            f"{LEGACY_SCORE} detectors only, not {kind.name!r}")
    return kind
