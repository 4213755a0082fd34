"""A fitted detector: masker + FADeR model + calibration, saved as one self-contained folder.

``Detector.load(MODEL_DIR).predict(images)`` gives, per image, the raw score, the normalised score
(threshold at 0.5), the decision, the anomaly map and the pixel mask.  The folder holds no pickle:
tensors are ``.safetensors``, everything else JSON, so loading a folder from another machine never
runs code.  Its ``detector.json`` carries a format name and version checked on load, the settings,
the library versions and a SHA-256 of every tensor file.

Folder layout (``FILES``)::

    detector.json        format, settings (profile, masker, head variant and config, seed), training
                         summary, library versions, checksums
    calibration.json     thresholds, normalisation, held-out normal scores (fader_kit.calibration)
    model.safetensors    the EAR U-Net and the FADeR head (a FaderModel state dict)
    masker.json          the masker's fitted state without its tensors
    masker.safetensors   the masker's tensors
    README.md            the model card
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from . import __version__
from .calibration import Calibration
from .errors import ConfigError, ModelDirError, UserError
from .fader import FaderModel
from .interfaces import Masker

FORMAT = "fader-kit/detector"
FORMAT_VERSION = 1
FILES = ("detector.json", "calibration.json", "model.safetensors", "masker.json", "masker.safetensors", "README.md")
TENSOR_FILES = ("model.safetensors", "masker.safetensors")


class DetectorSettings(BaseModel):
    """How the detector was built: enough to rebuild its modules and to repeat the fit."""

    model_config = ConfigDict(frozen=True)

    profile: str
    image_size: int
    masker: str
    masker_options: dict[str, Any] = Field(default_factory=dict)
    fader_variant: str
    fader_config: dict[str, Any]
    unet_config: dict[str, Any]
    seed: int
    ear_masks: Literal["blobs", "masker"] = "blobs"
    holdout: float
    false_alarm_rate: float
    kernel_size: int = 21
    batch_size: int = 16


class TrainingSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    normal_folder: str
    n_images: int
    n_train: int
    n_holdout: int
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """``detector.json`` of ``folder``, its format and version checked, with errors naming the file."""
    path = folder / "detector.json"
    if not folder.is_dir():
        raise ModelDirError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise ModelDirError(f"{folder} is not a fader-kit detector folder: missing file {path} "
                            "(made by fader-kit fit --out)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelDirError(f"{path} is not a fader-kit detector manifest (format {raw.get('format')!r}, "
                            f"expected {FORMAT!r})" if isinstance(raw, dict) else f"{path} is not a detector manifest")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ModelDirError(
            f"{folder} holds detector format version {version!r} (written by {raw.get('created_by', 'unknown')}); "
            f"this fader-kit {__version__} reads version {FORMAT_VERSION} only: "
            + ("upgrade fader-kit to load it" if newer else f"refit it with fader-kit {__version__} (fader-kit fit)"))
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelDirError(f"{path}: field {where}: {first['msg']}") from None


class Detector:
    """A fitted masker, FADeR model and calibration (see the module notes)."""

    def __init__(self, model: FaderModel, masker: Masker, calibration: Calibration, manifest: Manifest,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.masker = masker.to(self.device)
        self.model.masker = self.masker  # a head that reads the masker's score map gets it at predict time
        self.calibration = calibration
        self.manifest = manifest

    @property
    def settings(self) -> DetectorSettings:
        return self.manifest.settings

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score_batch(self, images: Tensor, watch: Any = None) -> tuple[Tensor, Tensor]:
        """``(anomaly maps [B, 1, S, S], scores [B])`` on the CPU for a batch ``[B, 3, S, S]`` in [0, 1];
        ``watch`` (a :class:`~fader_kit.util.timing.Stopwatch`) gets the masker and FADeR + map times."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ConfigError(f"images must be [B, 3, {self.image_size}, {self.image_size}] for this detector, got "
                              f"{list(images.shape)}: pass files, PIL images or arrays to predict() to have them converted")
        from contextlib import nullcontext

        from .util.timing import synchronize

        step = watch if watch is not None else (lambda name: nullcontext())
        with step("masker"):
            x = images.to(self.device, torch.float32)
            mb = self.masker.mask(x)
            if watch is not None:
                synchronize(self.device)
        with step("fader_map"):
            maps = self.model.anomaly_map(x, mb, self.settings.kernel_size)
            maps = maps.cpu()
        return maps, maps.flatten(1).amax(dim=1)

    def as_tensor(self, images: Sequence[Any] | Tensor) -> Tensor:
        """Paths, PIL images, ``[H, W(, C)]`` uint8 arrays or a float tensor -> ``[B, 3, S, S]``,
        converted as training images were."""
        from .imagefiles import load_array, pil_array, to_tensor

        if isinstance(images, Tensor):
            return images if images.ndim == 4 else images.unsqueeze(0)
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
    def save(self, folder: str | Path, *, card: str | None = None) -> Path:
        """Write the detector folder; files are written atomically, ``detector.json`` last."""
        from .statefiles import save_state, save_tensors
        from .util.files import write_json_atomic, write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
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
        sums = {name: sha256_of(folder / name) for name in TENSOR_FILES}
        self.manifest = self.manifest.model_copy(update={"sha256": sums})
        write_json_atomic(folder / "detector.json", self.manifest.model_dump(mode="json"))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
             masker_options: dict[str, Any] | None = None) -> "Detector":
        """Rebuild a detector from its folder.  Never unpickles; a missing or damaged file, or a
        folder of another format version, raises :class:`~fader_kit.errors.ModelDirError` naming it.

        ``masker_options`` override the stored ones, e.g. ``{"weights": PATH}`` where a masker with a
        pretrained backbone finds that backbone on this machine (the folder holds the masker's
        fitted state, not a pretrained backbone's weights)."""
        from safetensors.torch import load_file

        from .config import UNetConfig, fader_config
        from .registry import default_registry
        from .statefiles import load_state
        from .unet import EARUNet

        folder = Path(folder)
        manifest = read_manifest(folder)
        for name in FILES:
            if name != "README.md" and not (folder / name).is_file():
                raise ModelDirError(f"detector folder {folder} is incomplete: missing file {folder / name}")
        if verify:
            for name, digest in manifest.sha256.items():
                if sha256_of(folder / name) != digest:
                    raise ModelDirError(f"{folder / name} does not match the checksum in {folder / 'detector.json'}: "
                                        "the file was changed or damaged after fitting")
        s = manifest.settings
        try:
            calibration = Calibration.model_validate_json((folder / "calibration.json").read_text())
        except ValidationError as exc:
            raise ModelDirError(f"{folder / 'calibration.json'} is damaged: {exc.errors()[0]['msg']}") from None
        device = torch.device(device)
        try:
            head = fader_config(s.fader_config)  # the plain or the experimental configuration, as saved
            unet = EARUNet(UNetConfig(**s.unet_config))
        except (ValidationError, ValueError) as exc:
            raise ModelDirError(f"{folder / 'detector.json'}: the saved U-Net or head settings are not valid for this "
                                f"fader-kit {__version__}: {str(exc).splitlines()[0]}") from None
        model = FaderModel(unet, None, head)
        try:
            state = load_file(str(folder / "model.safetensors"))
        except Exception as exc:
            raise ModelDirError(f"{folder / 'model.safetensors'} is not readable ({type(exc).__name__}: {exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelDirError(f"{folder / 'model.safetensors'} does not fit the settings in detector.json: "
                                f"{str(exc).splitlines()[0]}") from None
        masker_state, _ = load_state(folder / "masker.json", folder / "masker.safetensors")
        registry = default_registry()
        try:
            registry.get(s.masker)
        except (KeyError, UserError) as exc:
            raise ModelDirError(f"{folder} needs masker {s.masker!r}, which is not installed here ({exc})") from None
        masker = registry.create(s.masker, **{**s.masker_options, **(masker_options or {}), "device": str(device)})
        masker.load_state_dict(masker_state)
        return cls(model, masker, calibration, manifest, device)
