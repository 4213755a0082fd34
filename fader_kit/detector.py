"""A fitted detector: masker (+ EAR / FADeR model) + calibration, saved as one self-contained folder.

``Detector.load(MODEL_DIR).predict(images)`` gives, per image, the raw score, the normalised score
(threshold at 0.5), the decision, the anomaly map and the pixel mask.  The folder holds no pickle:
tensors are ``.safetensors``, everything else JSON, so loading a folder from another machine never
runs code.  Its ``detector.json`` carries a format name and version checked on load, the settings,
the library versions and a SHA-256 of every file of the folder, its own content included; loading
trusts no file (:mod:`fader_kit.modeldir`, and the validators of the models below).

Folder layout (``FILES``)::

    detector.json        format, settings (profile, masker, head variant and config, seed), training
                         summary, library versions, checksums
    calibration.json     thresholds, normalisation, held-out normal scores (fader_kit.calibration)
    model.safetensors    the EAR U-Net and the FADeR head (a FaderModel state dict); absent when the
                         detector scores with the masker alone (``settings.score``, fader_kit.score_kinds)
    masker.json          the masker's fitted state without its tensors
    masker.safetensors   the masker's tensors
    README.md            the model card
    selection.json       optional: the candidates ``fit`` chose among (fader_kit.auto_select)
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor

from . import __version__
from .calibration import Calibration
from .errors import ConfigError, ModelDirError, UserError
from .fader import FaderModel
from .interfaces import Masker, MaskerInfo
from .modeldir import FILES as MODEL_DIR_FILES
from .modeldir import FORMAT as FORMAT  # the name callers import from here
from .modeldir import canonical_json
from .score_kinds import LEGACY_SCORE, ScoreKind, ScoreName, kind_maps, score_kind
from .tensor_checks import check_model_tensors, check_tensor_refs

#: 3: the score kind in the settings, fusion scales in the calibration, no model file for the masker
#: alone; 2 (still read): every file digested, detector.json included; 1 (still read): the two tensor
#: files only.  Folders before 3 are ``fader`` detectors.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FILES = MODEL_DIR_FILES
TENSOR_FILES = ("model.safetensors", "masker.safetensors")

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


def _first_error(exc: ValidationError, field: str = "field ") -> str:
    """``field a.b: what is wrong`` for the first problem pydantic found, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).splitlines()[0].removeprefix("Value error, ")
    return (f"{field}{where}: " if where else "") + msg


def _reason(exc: Exception) -> str:
    """One line saying why ``exc`` was raised (a pydantic error: its first problem)."""
    if isinstance(exc, ValidationError):
        return _first_error(exc)
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
    score: ScoreName = Field(LEGACY_SCORE, description="what the detector scores with (fader_kit.score_kinds); "
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
        from .config import UNetConfig

        try:
            cfg = UNetConfig.model_validate_json(canonical_json(v), strict=True)
        except ValidationError as exc:
            raise ValueError(_first_error(exc, "")) from None
        if cfg.in_channels != 3 or not 2 <= cfg.depth <= MAX_DEPTH or max(cfg.widths) > MAX_WIDTH:
            raise ValueError(f"widths must hold 2 to {MAX_DEPTH} widths of at most {MAX_WIDTH} channels for RGB "
                             f"input, got widths {list(cfg.widths)} and {cfg.in_channels} input channels")
        return v

    @field_validator("fader_config")
    @classmethod
    def _head(cls, v: dict[str, Any]) -> dict[str, Any]:
        from .config import ExperimentalFaderConfig, HeadExperiment, fader_config

        try:
            cfg = fader_config(dict(v))
            # again without type coercion (a float where an int belongs is refused, not rounded)
            data = v if isinstance(cfg, ExperimentalFaderConfig) else {
                k: x for k, x in v.items() if k not in HeadExperiment.model_fields}
            type(cfg).model_validate_json(canonical_json(data), strict=True)
        except ValidationError as exc:
            raise ValueError(_first_error(exc, "")) from None
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


@dataclass(frozen=True)
class Prediction:
    """One image's verdict.  ``anomaly_map`` and ``mask`` are ``[S, S]`` at the model's side;
    ``max_location`` is the (x, y) of the map's maximum in those pixels."""

    score: float
    normalised_score: float
    anomalous: bool
    anomaly_map: Tensor
    mask: Tensor
    max_location: tuple[int, int]
    source: str | None = None


@dataclass(frozen=True)
class Decision:
    """The threshold predictions are judged against, on the *raw* score scale: the calibrated one,
    one re-derived at another false-alarm rate, the validation's F1-optimal one, or a user's number
    (``threshold``).  The normalised score stays on the calibrated scale (a display, never the rule);
    the pixel threshold is the calibrated one, and only flagged images get a mask."""

    calibration: Calibration
    threshold: float | None = None  # raw image score; None: the calibration's image threshold
    label: str = ""

    @property
    def pixel_threshold(self) -> float:
        return self.calibration.pixel_threshold

    @property
    def image_threshold(self) -> float:
        return self.calibration.image_threshold if self.threshold is None else self.threshold

    def decide(self, scores: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(normalised scores, decisions)`` as float64 / bool arrays: flagged when the raw score is
        above the image threshold."""
        raw = scores.detach().double().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores, np.float64)
        return self.calibration.normalise(raw), raw > self.image_threshold


def make_decision(calibration: Calibration, threshold: float | str | None = None,
                  false_alarm_rate: float | None = None) -> Decision:
    """The :class:`Decision` for the predict-time options: ``threshold`` a raw image score (flag above
    it; ``"f1"``: the validation's F1-optimal one), or ``false_alarm_rate`` re-derived from the held-out
    normal scores; neither: the calibration as fitted."""
    if threshold is not None and false_alarm_rate is not None:
        raise ConfigError("give --threshold or --false-alarm-rate, not both")
    if false_alarm_rate is not None:
        cal = calibration.with_rate(false_alarm_rate)
        return Decision(cal, None, f"false-alarm rate {cal.false_alarm_rate:g} (image threshold "
                                   f"{cal.image_threshold:.6g}, {cal.n_images} held-out normal images{_expected(cal)})")
    if threshold == "f1":
        if calibration.validation is None:
            raise ConfigError("--threshold f1 needs a detector fitted with --validation")
        t = calibration.validation.f1_threshold
        return Decision(calibration, t, f"F1-optimal on the validation set (raw score above {t:.6g})")
    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"argument --threshold {threshold!r}: expected a raw image score (a number, e.g. "
                              f"{calibration.image_threshold:.6g}, the calibrated one) or 'f1'") from None
        if not math.isfinite(t):
            raise ConfigError(f"argument --threshold {threshold!r}: expected a finite raw image score")
        above = sum(s > t for s in calibration.normal_scores)
        return Decision(calibration, t, f"raw score above {t:.6g} ({above} of {calibration.n_images} held-out normal "
                                        "images above it)")
    return Decision(calibration, None, f"false-alarm rate {calibration.false_alarm_rate:g} (as fitted"
                                       f"{_expected(calibration)})")


def _expected(calibration: Calibration) -> str:
    """``"; expected ... on new normal images"`` where the calibration states it (folders fitted since it does)."""
    e = calibration.expected_false_alarm_rate
    return "" if e is None else f"; expected {e:.4f} on new normal images"


def check_image_tensor(images: Tensor, argument: str = "images") -> Tensor:
    """``images`` as given when it is a float tensor with every value in [0, 1] (what the model was
    trained on), else a ConfigError naming ``argument``.  Nothing is rescaled: a uint8 or 0-255 float
    tensor would be judged on the wrong scale without a sound, so it is refused instead."""
    if not images.is_floating_point():
        raise ConfigError(f"argument {argument}: a {images.dtype} tensor; predict() takes float tensors with values in "
                          "[0, 1] (divide uint8 pixels by 255), or pass paths, PIL images or uint8 arrays")
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"argument {argument}: values that are not finite (NaN or infinite)")
        if low < 0.0 or high > 1.0:
            hint = " (0-255 pixels? divide by 255)" if high > 1.0 and high <= 255.0 and low >= 0.0 else ""
            raise ConfigError(f"argument {argument}: values from {low:g} to {high:g}, outside [0, 1]{hint}")
    return images


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_version(raw: dict[str, Any], folder: Path) -> int:
    """The format version of a parsed ``detector.json``, or a ModelDirError saying what to do."""
    version = raw.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        from .modeldir import shown

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
        raise ModelDirError(f"{path}: {_first_error(exc)}") from None


def validate_manifest(raw: dict[str, Any], folder: Path) -> Manifest:
    return validate_file(Manifest, raw, folder / "detector.json")


def read_manifest(folder: Path) -> Manifest:
    """``detector.json`` of ``folder``, its format, version and fields checked, with errors naming the
    file (its digests are checked by :meth:`Detector.load`, which reads the other files)."""
    from .modeldir import read_manifest_file

    raw = read_manifest_file(folder)
    check_version(raw, folder)
    return validate_manifest(raw, folder)


def build_model(settings: DetectorSettings) -> FaderModel:
    """The modules ``settings`` describe, without weights: a backbone head's backbone too (the saved
    state holds its weights, so no pretrained weights are looked for); plain EAR (no head) for a
    score kind without the FADeR head."""
    from .config import UNetConfig, fader_config
    from .unet import EARUNet

    unet = EARUNet(UNetConfig(**settings.unet_config))
    head: Any = "auto" if settings.kind.head else None
    return FaderModel(unet, None, fader_config(settings.fader_config), head=head, pretrained_backbone=False)


def raw_kind(raw: dict[str, Any], folder: Path, version: int) -> ScoreKind:
    """The score kind a parsed ``detector.json`` names (before its fields are validated: it decides
    which files the folder must hold); folders before format version 3 are ``fader`` detectors."""
    from .modeldir import MANIFEST, shown

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


def load_model(s: DetectorSettings, data: bytes, folder: Path) -> FaderModel:
    """The model of ``model.safetensors`` (``data``), its header checked against the modules the
    settings describe before a module is built."""
    from . import modeldir as md

    header = md.check_safetensors(data, folder / md.MODEL)
    try:
        with torch.device("meta"):  # the modules' shapes, without allocating them
            expected = build_model(s).state_dict()
    except (RuntimeError, ValueError, UserError) as exc:
        raise ModelDirError(f"{folder / md.MANIFEST}: field settings: they describe a model that cannot be built "
                            f"({_reason(exc)})") from None
    check_model_tensors(header, expected, folder / md.MODEL)
    model = build_model(s)
    model.load_state_dict(md.load_tensors(data, folder / md.MODEL))
    return model


class Detector:
    """A fitted masker, EAR / FADeR model (None for the masker alone) and calibration, scoring with
    the kind ``manifest.settings.score`` names (see the module notes and :mod:`fader_kit.score_kinds`)."""

    def __init__(self, model: FaderModel | None, masker: Masker, calibration: Calibration, manifest: Manifest,
                 device: torch.device | str = "cpu") -> None:
        kind = manifest.settings.kind
        if (model is not None) != kind.unet or (model is not None and (model.head is not None) != kind.head):
            raise ConfigError(f"a {kind.name!r} detector {'needs' if kind.unet else 'holds no'} reconstruction model"
                              + (" with the FADeR head" if kind.head else " without a head" if kind.unet else ""))
        if (calibration.fusion is not None) != kind.fused:
            raise ConfigError(f"a {kind.name!r} detector's calibration {'needs' if kind.fused else 'holds no'} fusion "
                              "scales")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.masker = masker.to(self.device)
        if self.model is not None:
            self.model.masker = self.masker  # a head that reads the masker's score map gets it at predict time
        self.calibration = calibration
        self.manifest = manifest

    @property
    def kind(self) -> ScoreKind:
        """What this detector scores with (:mod:`fader_kit.score_kinds`)."""
        return self.settings.kind

    @property
    def settings(self) -> DetectorSettings:
        return self.manifest.settings

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score_batch(self, images: Tensor, watch: Any = None) -> tuple[Tensor, Tensor]:
        """``(anomaly maps [B, 1, S, S], scores [B])`` on the CPU for a batch ``[B, 3, S, S]`` in [0, 1],
        as this detector's score kind computes them; ``watch`` (a :class:`~fader_kit.util.timing.Stopwatch`)
        gets the masker and map times."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ConfigError(f"images must be [B, 3, {self.image_size}, {self.image_size}] for this detector, got "
                              f"{list(images.shape)}: pass files, PIL images or arrays to predict() to have them converted")
        x = images.to(self.device, torch.float32)
        maps = kind_maps(self.kind, x, self.masker, self.model, self.calibration.fusion, self.settings.kernel_size,
                         watch).float().cpu()
        return maps, maps.flatten(1).amax(dim=1)

    def as_tensor(self, images: Sequence[Any] | Tensor) -> Tensor:
        """Paths, PIL images, ``[H, W(, C)]`` uint8 arrays or a float tensor -> ``[B, 3, S, S]``,
        converted as training images were."""
        from .imagefiles import load_array, pil_array, to_tensor

        if isinstance(images, Tensor):
            return check_image_tensor(images if images.ndim == 4 else images.unsqueeze(0))
        arrays = []
        for item in images:
            if isinstance(item, (str, Path)):
                arrays.append(load_array(Path(item), self.image_size)[0])
            elif isinstance(item, Image.Image):
                arrays.append(pil_array(item, self.image_size))
            elif isinstance(item, np.ndarray):
                if item.dtype != np.uint8:
                    raise ConfigError(f"array images must be uint8 (0..255), got {item.dtype}")
                arrays.append(pil_array(Image.fromarray(item), self.image_size))
            else:
                raise ConfigError(f"cannot predict on a {type(item).__name__}: pass paths, PIL images or uint8 arrays")
        return to_tensor(arrays)

    def predict(self, images: Sequence[Any] | Tensor, *, threshold: float | str | None = None,
                false_alarm_rate: float | None = None, batch_size: int | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image.  ``threshold`` (a raw image score, or ``"f1"``) or
        ``false_alarm_rate`` change the decision without refitting (see :func:`make_decision`).
        For many files use ``fader-kit predict`` (or :func:`fader_kit.predicting.predict_files`),
        which streams them in constant memory."""
        decision = make_decision(self.calibration, threshold, false_alarm_rate)
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
            images = [images]  # one image, not a sequence of characters or rows
        items = list(images) if not isinstance(images, Tensor) else images
        bs = batch_size or self.settings.batch_size
        out: list[Prediction] = []
        for i in range(0, len(items), bs):
            chunk = items[i : i + bs]
            sources = [str(c) for c in chunk] if not isinstance(chunk, Tensor) and all(
                isinstance(c, (str, Path)) for c in chunk) else [None] * len(chunk)
            out += self.judge(*self.score_batch(self.as_tensor(chunk)), decision, sources)
        return out

    @staticmethod
    def judge(maps: Tensor, scores: Tensor, decision: Decision, sources: Sequence[str | None]) -> list[Prediction]:
        norm, flagged = decision.decide(scores)
        # the pixel threshold says where in a flagged image the map is high; an image judged normal has no mask
        masks = (maps[:, 0] > decision.pixel_threshold) & torch.from_numpy(flagged)[:, None, None]
        width = maps.shape[-1]
        where = maps.flatten(1).argmax(dim=1).tolist()
        return [Prediction(float(scores[i]), float(norm[i]), bool(flagged[i]), maps[i, 0], masks[i],
                           (where[i] % width, where[i] // width), sources[i]) for i in range(maps.shape[0])]

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, card: str | None = None, extras: dict[str, str] | None = None) -> Path:
        """Write the detector folder; files are written atomically, ``detector.json`` last.  ``extras``:
        text of optional files (:data:`~fader_kit.modeldir.OPTIONAL_FILES`, e.g. ``selection.json``)."""
        from .statefiles import save_state, save_tensors
        from .util.files import write_json_atomic, write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
            save_tensors(state, folder / "model.safetensors")
        save_state(self.masker.state_dict(), folder / "masker.json", folder / "masker.safetensors",
                   meta={"masker": self.settings.masker, "info": self.masker.info.model_dump(mode="json")})
        write_json_atomic(folder / "calibration.json", self.calibration.model_dump(mode="json"))
        if card is not None:
            write_text_atomic(folder / "README.md", card)
        else:
            from .modelcard import model_card

            write_text_atomic(folder / "README.md", model_card(self.manifest, self.calibration))
        from .modeldir import MANIFEST, OPTIONAL_FILES, folder_files, manifest_digest

        extras = extras or {}
        names = folder_files(self.model is not None, tuple(extras))  # an unknown name is a ValueError
        for name in OPTIONAL_FILES:  # a stale optional file of an earlier detector in the folder is not kept
            if name in extras:
                write_text_atomic(folder / name, extras[name])
            else:
                (folder / name).unlink(missing_ok=True)
        # every file is digested as it lies on disk; detector.json last, with the digest of its own content
        sums = {name: sha256_of(folder / name) for name in names if name != MANIFEST}
        self.manifest = self.manifest.model_copy(update={"format_version": FORMAT_VERSION, "sha256": sums})
        payload = self.manifest.model_dump(mode="json")
        payload["sha256"][MANIFEST] = manifest_digest(payload)
        self.manifest = self.manifest.model_copy(update={"sha256": payload["sha256"]})
        write_json_atomic(folder / MANIFEST, payload)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
             masker_options: dict[str, Any] | None = None) -> "Detector":
        """Rebuild a detector from its folder.  Never unpickles, and trusts no file in it (see
        :mod:`fader_kit.modeldir`): every file is read once with a size cap and checked against its
        digest, then every field of every JSON file is validated and the tensor files' headers are
        compared with the modules the settings describe -- all before a module is built.  Anything
        wrong is one :class:`~fader_kit.errors.ModelDirError` naming the file.  ``verify=False`` skips
        the digest comparison only.

        ``masker_options`` override the stored ones, e.g. ``{"weights": PATH}`` where a masker with a
        pretrained backbone finds that backbone on this machine (the folder holds the masker's
        fitted state, not a pretrained backbone's weights)."""
        from . import modeldir as md

        folder = Path(folder)
        raw = md.read_manifest_file(folder)
        version = check_version(raw, folder)
        kind = raw_kind(raw, folder, version)
        files = md.read_folder(folder, raw, version, verify=verify, model=kind.unet)
        manifest = validate_manifest(raw, folder)
        s = manifest.settings
        calibration = validate_file(Calibration, md.parse_json(files[md.CALIBRATION], folder / md.CALIBRATION),
                                    folder / md.CALIBRATION)
        if (calibration.fusion is not None) != kind.fused:
            raise ModelDirError(f"{folder / md.CALIBRATION}: field fusion: a {kind.name!r} detector "
                                f"{'needs' if kind.fused else 'holds no'} fusion scales")
        masker_file = validate_file(MaskerFile, md.parse_json(files[md.MASKER_JSON], folder / md.MASKER_JSON),
                                    folder / md.MASKER_JSON)
        if masker_file.masker != s.masker:
            raise ModelDirError(f"{folder / md.MASKER_JSON}: field masker: holds the state of masker "
                                f"{md.shown(masker_file.masker)}, but {folder / md.MANIFEST} names {s.masker!r}")
        masker_header = md.check_safetensors(files[md.MASKER_TENSORS], folder / md.MASKER_TENSORS)
        check_tensor_refs(masker_file.state, masker_header, folder / md.MASKER_JSON)
        from .registry import default_registry

        registry = default_registry()
        try:
            registry.get(s.masker)
        except (KeyError, UserError) as exc:
            raise ModelDirError(f"{folder / md.MANIFEST}: field settings.masker: {folder} needs masker {s.masker!r}, "
                                f"which is not installed here ({str(exc).splitlines()[0]})") from None
        device = torch.device(device)
        model = load_model(s, files[md.MODEL], folder) if kind.unet else None
        from .statefiles import join_state

        masker_state = join_state(masker_file.state, md.load_tensors(files[md.MASKER_TENSORS], folder / md.MASKER_TENSORS),
                                  source=str(folder / md.MASKER_JSON))
        options = {**s.masker_options, **(masker_options or {}), "device": str(device)}
        try:
            masker = registry.create(s.masker, **options)
        except (UserError, ValueError, TypeError) as exc:
            raise ModelDirError(f"{folder / md.MANIFEST}: field settings.masker_options: masker {s.masker!r} refuses "
                                f"them ({_reason(exc)})") from None
        try:
            masker.check_state(masker_state, s.image_size)
            masker.load_state_dict(masker_state)
        except (UserError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ModelDirError(f"{folder / md.MASKER_JSON}: not a fitted state of masker {s.masker!r} for "
                                f"{s.image_size} px images: {_reason(exc)}") from None
        return cls(model, masker, calibration, manifest, device)
