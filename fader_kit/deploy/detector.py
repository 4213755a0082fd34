"""A fitted detector: masker (+ EAR / FADeR model) + calibration, saved as one self-contained folder.

``Detector.load(MODEL_DIR).predict(images)`` gives, per image, the raw score, the normalised score
(threshold at 0.5), the decision, the anomaly map and the pixel mask.  The folder holds no pickle:
tensors are ``.safetensors``, everything else JSON, so loading a folder from another machine never
runs code.  Its ``detector.json`` carries a format name and version checked on load, the settings,
the library versions and a SHA-256 of every file of the folder, its own content included; loading
trusts no file (:mod:`fader_kit.deploy.modeldir`, and the validators of the models below).

Folder layout (``FILES``)::

    detector.json        format, settings (profile, masker, head variant and config, seed), training
                         summary, library versions, checksums
    calibration.json     thresholds, normalisation, held-out normal scores (fader_kit.deploy.thresholds)
    model.safetensors    the EAR U-Net and the FADeR head (a FaderModel state dict); absent when the
                         detector scores with the masker alone (``settings.score``, fader_kit.deploy.score_kinds)
    masker.json          the masker's fitted state without its tensors
    masker.safetensors   the masker's tensors
    README.md            the model card
    selection.json       optional: the candidates ``fit`` chose among (fader_kit.deploy.auto_select)
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fader_kit.deploy.thresholds import Calibration
from fader_kit.deploy.decision import Decision, Prediction, make_decision
from fader_kit.errors import ConfigError, ModelDirError, UserError
from fader_kit.model.fader import FaderModel
from fader_kit.maskers.interfaces import Masker
from fader_kit.deploy.manifest import (FORMAT_VERSION, MAX_BATCH, MAX_DEPTH, MAX_HEAD, MAX_IMAGE_SIZE, MAX_KERNEL, MAX_WIDTH,
                       READABLE_VERSIONS, DetectorSettings, Manifest, MaskerFile, TrainingSummary, check_version,
                       error_reason, raw_kind, read_manifest, validate_file, validate_manifest)
from fader_kit.deploy.modeldir import FILES as MODEL_DIR_FILES
from fader_kit.deploy.modeldir import FORMAT as FORMAT  # the name callers import from here
from fader_kit.deploy.score_kinds import ScoreKind, kind_maps
from fader_kit.deploy.tensor_checks import check_model_tensors, check_tensor_refs

#: The names callers import from here (defined in :mod:`fader_kit.deploy.manifest` and :mod:`fader_kit.deploy.decision`).
__all__ = ["FILES", "FORMAT", "FORMAT_VERSION", "MAX_BATCH", "MAX_DEPTH", "MAX_HEAD", "MAX_IMAGE_SIZE", "MAX_KERNEL",
           "MAX_WIDTH", "READABLE_VERSIONS", "TENSOR_FILES", "Decision", "Detector", "DetectorSettings", "Manifest",
           "MaskerFile", "Prediction", "TrainingSummary", "build_model", "check_image_tensor", "check_version",
           "load_model", "make_decision", "raw_kind", "read_manifest", "sha256_of", "validate_file",
           "validate_manifest"]

FILES = MODEL_DIR_FILES
TENSOR_FILES = ("model.safetensors", "masker.safetensors")


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


def build_model(settings: DetectorSettings) -> FaderModel:
    """The modules ``settings`` describe, without weights: a backbone head's backbone too (the saved
    state holds its weights, so no pretrained weights are looked for); plain EAR (no head) for a
    score kind without the FADeR head."""
    from fader_kit.model.config import UNetConfig, fader_config
    from fader_kit.model.unet import EARUNet

    unet = EARUNet(UNetConfig(**settings.unet_config))
    head: Any = "auto" if settings.kind.head else None
    return FaderModel(unet, None, fader_config(settings.fader_config), head=head, pretrained_backbone=False)


def load_model(s: DetectorSettings, data: bytes, folder: Path) -> FaderModel:
    """The model of ``model.safetensors`` (``data``), its header checked against the modules the
    settings describe before a module is built."""
    from fader_kit.deploy import modeldir as md

    header = md.check_safetensors(data, folder / md.MODEL)
    try:
        with torch.device("meta"):  # the modules' shapes, without allocating them
            expected = build_model(s).state_dict()
    except (RuntimeError, ValueError, UserError) as exc:
        raise ModelDirError(f"{folder / md.MANIFEST}: field settings: they describe a model that cannot be built "
                            f"({error_reason(exc)})") from None
    check_model_tensors(header, expected, folder / md.MODEL)
    model = build_model(s)
    model.load_state_dict(md.load_tensors(data, folder / md.MODEL))
    return model


class Detector:
    """A fitted masker, EAR / FADeR model (None for the masker alone) and calibration, scoring with
    the kind ``manifest.settings.score`` names (see the module notes and :mod:`fader_kit.deploy.score_kinds`)."""

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
        """What this detector scores with (:mod:`fader_kit.deploy.score_kinds`)."""
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
        from fader_kit.deploy.imagefiles import load_array, pil_array, to_tensor

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
        For many files use ``fader-kit predict`` (or :func:`fader_kit.deploy.predict.predict_files`),
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
        text of optional files (:data:`~fader_kit.deploy.modeldir.OPTIONAL_FILES`, e.g. ``selection.json``)."""
        from fader_kit.deploy.statefiles import save_state, save_tensors
        from fader_kit.util.files import write_json_atomic, write_text_atomic

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
            from fader_kit.deploy.modelcard import model_card

            write_text_atomic(folder / "README.md", model_card(self.manifest, self.calibration))
        from fader_kit.deploy.modeldir import MANIFEST, OPTIONAL_FILES, folder_files, manifest_digest

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
        :mod:`fader_kit.deploy.modeldir`): every file is read once with a size cap and checked against its
        digest, then every field of every JSON file is validated and the tensor files' headers are
        compared with the modules the settings describe -- all before a module is built.  Anything
        wrong is one :class:`~fader_kit.errors.ModelDirError` naming the file.  ``verify=False`` skips
        the digest comparison only.

        ``masker_options`` override the stored ones, e.g. ``{"weights": PATH}`` where a masker with a
        pretrained backbone finds that backbone on this machine (the folder holds the masker's
        fitted state, not a pretrained backbone's weights)."""
        from fader_kit.deploy import modeldir as md

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
        from fader_kit.maskers.registry import default_registry

        registry = default_registry()
        try:
            registry.get(s.masker)
        except (KeyError, UserError) as exc:
            raise ModelDirError(f"{folder / md.MANIFEST}: field settings.masker: {folder} needs masker {s.masker!r}, "
                                f"which is not installed here ({str(exc).splitlines()[0]})") from None
        device = torch.device(device)
        model = load_model(s, files[md.MODEL], folder) if kind.unet else None
        from fader_kit.deploy.statefiles import join_state

        masker_state = join_state(masker_file.state, md.load_tensors(files[md.MASKER_TENSORS], folder / md.MASKER_TENSORS),
                                  source=str(folder / md.MASKER_JSON))
        options = {**s.masker_options, **(masker_options or {}), "device": str(device)}
        try:
            masker = registry.create(s.masker, **options)
        except (UserError, ValueError, TypeError) as exc:
            raise ModelDirError(f"{folder / md.MANIFEST}: field settings.masker_options: masker {s.masker!r} refuses "
                                f"them ({error_reason(exc)})") from None
        try:
            masker.check_state(masker_state, s.image_size)
            masker.load_state_dict(masker_state)
        except (UserError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ModelDirError(f"{folder / md.MASKER_JSON}: not a fitted state of masker {s.masker!r} for "
                                f"{s.image_size} px images: {error_reason(exc)}") from None
        return cls(model, masker, calibration, manifest, device)
