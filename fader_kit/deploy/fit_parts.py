"""The trained parts of one fit, and the detector of every score kind they give without retraining.

``fader-kit fit --score KIND`` trains what one kind needs; a caller that wants to compare kinds
(e.g. to pick one on validation images) trains the parts once for all of them and calibrates one
detector per kind from the same parts::

    parts = train_parts(SCORE_NAMES, train_images, masker, "patch_stats", profile=..., head=..., ...)
    detectors = candidate_detectors(parts, SCORE_NAMES, held_out_images, base_manifest, rate=0.01)
    detectors["fused"].predict(images)

The kinds share everything they have in common: one fitted masker, one EAR U-Net (``ear``,
``fused`` and, through a copy wrapped with the head, ``fader``), one FADeR head, one fusion fit.
Each candidate is calibrated on the same held-out normal images, so their thresholds answer the
same false-alarm rate.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from fader_kit.deploy.thresholds import calibrate, validate
from fader_kit.model.config import FaderConfig, Profile
from fader_kit.deploy.detector import Detector, Manifest
from fader_kit.model.fader import FaderModel
from fader_kit.model.fusion import FusionScales
from fader_kit.maskers.interfaces import Masker
from fader_kit.data.pseudo_defects import HEAD_SOURCE_KINDS
from fader_kit.deploy.score_kinds import ScoreKind, batched_maps, score_kind
from fader_kit.model.variants import head_strategies
from fader_kit.model.unet import EARUNet

Log = Callable[[str], None]


@dataclass
class FitParts:
    """A fitted masker and the models trained on the same normal images: ``ear`` plain EAR (no head),
    ``fader`` EAR + FADeR head, ``fusion`` the fused score's scales (plain EAR's map + the masker's);
    None where no requested kind needed them.  ``seconds``: training time per part."""

    masker: Masker
    ear: FaderModel | None = None
    fader: FaderModel | None = None
    fusion: FusionScales | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def model_for(self, kind: ScoreKind) -> FaderModel | None:
        """The reconstruction model ``kind`` scores with (None: the masker alone)."""
        if not kind.unet:
            return None
        model = self.fader if kind.head else self.ear
        if model is None:
            raise ValueError(f"score kind {kind.name!r} needs the {'FADeR' if kind.head else 'EAR'} model, which "
                             "these parts were not trained with (pass the kind to train_parts)")
        return model


def kinds_of(names: Iterable[str]) -> list[ScoreKind]:
    kinds = [score_kind(n) for n in names]
    if not kinds:
        raise ValueError("no score kind given")
    return kinds


def trained_on(kind: ScoreKind, head: FaderConfig) -> tuple[str, ...]:
    """The pseudo-defect kinds (:mod:`fader_kit.data.pseudo_defects`) that ``kind``'s learned parts trained
    on, so a selection does not judge it on them: the FADeR head's pseudo-anomaly source for ``fader``;
    the pasted squares the fusion's mix is chosen on for ``fused``; none for the masker alone and plain
    EAR (trained to reconstruct, never shown a defect)."""
    if kind.head and head.pseudo_anomalies > 0:
        return HEAD_SOURCE_KINDS[head.pseudo_source]
    return HEAD_SOURCE_KINDS["image"] if kind.fused else ()


def shared_ear_unet(images: Tensor, profile: Profile, *, seed: int, device: torch.device,
                    progress: bool = False, cache: Path | None = None) -> tuple[EARUNet, float]:
    """The EAR U-Net trained on random blobs alone, which serves every masker of the same ``images``
    (pass it to :func:`train_parts` as ``unet``), and its training seconds.  ``cache``: a file it is
    loaded from when it exists, else saved to, with its training seconds beside it (``.json``), so
    maskers compared in separate runs share one training and are each charged its time."""
    from fader_kit.model.pipeline import ear_stage

    unet, info = ear_stage(images, lambda: torch.empty(0), profile, ear_masks="blobs", seed=seed, device=device,
                           progress=progress, cache=cache)
    if cache is None:
        return unet, float(info["seconds"])
    seconds_file = cache.with_suffix(".json")
    if info["reused"]:
        return unet, float(json.loads(seconds_file.read_text())["seconds"])
    seconds_file.write_text(json.dumps({"seconds": float(info["seconds"])}))
    return unet, float(info["seconds"])


def train_parts(names: Iterable[str], images: Tensor, masker: Masker, masker_name: str, *, profile: Profile,
                head: FaderConfig, ear_masks: str, seed: int, device: torch.device, progress: bool = False,
                log: Log = print, unet: EARUNet | None = None, masks: Tensor | None = None) -> FitParts:
    """Train, on the normal ``images`` with the *fitted* ``masker``, what the score kinds ``names``
    need: nothing for the masker alone; the EAR U-Net (:func:`~fader_kit.model.pipeline.ear_stage`, as
    ``evaluate`` trains it) for every other kind; the FADeR head on a copy of it
    (:func:`~fader_kit.model.pipeline.fader_stage`) for ``fader``; the fusion (:func:`fit_fusion_for`) for
    ``fused``.  ``unet``: an EAR U-Net already trained on these images (with ``ear_masks="blobs"`` one
    serves every masker: :func:`shared_ear_unet`), used instead of training one; it is not changed (the
    head trains on a copy), and ``seconds`` then has no ``"ear"``.  ``masks``: the masker's binary masks
    of ``images``, when the caller has them already (a search that trains the kinds one at a time)."""
    from fader_kit.model import pipeline

    kinds = kinds_of(names)
    parts = FitParts(masker)
    if not any(k.unet for k in kinds):
        log("score: the masker alone: no U-Net trained")
        return parts
    bs = profile.eval_batch_size
    binary = masks if masks is not None else pipeline.compute_masks(masker, images, batch_size=bs, device=device,
                                                                     progress=progress)
    if unet is None:
        unet, info = pipeline.ear_stage(images, lambda: binary, profile, ear_masks=ear_masks, seed=seed, device=device,
                                        progress=progress)
        parts.seconds["ear"] = float(info["seconds"])
        log(f"EAR U-Net trained in {parts.seconds['ear']:.1f}s")
    if any(k.head for k in kinds):
        # the score maps pass through float16 as the benchmark's mask cache keeps them, so fit trains the head
        # on what evaluate trains it on; only a head that reads them needs them
        scores = (pipeline.masker_score_maps(masker, images, batch_size=bs, device=device).half()
                  if head_strategies(head).reads_scores else None)
        parts.fader, info = pipeline.fader_stage(unet, images, binary, head, profile.fader, seed=seed, device=device,
                                                 progress=progress, scores=scores, masker=lambda: masker,
                                                 masker_name=masker_name)
        parts.fader.masker = masker  # from here on the model computes the masker's scores where its head reads them
        parts.seconds["fader"] = float(info["seconds"])
        log(f"FADeR head trained in {parts.seconds['fader']:.1f}s")
    if any(not k.head for k in kinds if k.unet):
        parts.ear = ear = FaderModel(unet, None, head, head=None)
        if any(k.fused for k in kinds):
            t0 = time.perf_counter()
            parts.fusion = f = fit_fusion_for(ear, masker, images, binary, seed=seed, batch_size=bs, device=device)
            parts.seconds["fusion"] = time.perf_counter() - t0
            log(f"fused score: EAR weight {f.weight:g}, masker weight {1 - f.weight:g} (chosen on pseudo-anomalies)")
    return parts


def fit_fusion_for(ear: FaderModel, masker: Masker, images: Tensor, masks: Tensor, *, seed: int, batch_size: int,
                   device: torch.device) -> FusionScales:
    """The fused score's scales and mix (rule ``pseudo``) for plain EAR's map and the masker's score
    map, from the normal training ``images`` (and their masks) alone, as ``evaluate --fused`` fits it:
    the masker's maps pass through float16 as the mask cache keeps them there."""
    from fader_kit.model.fusion import fit_fusion
    from fader_kit.model.pipeline import anomaly_maps, masker_score_maps, pseudo_anomaly_maps

    normal = anomaly_maps(ear, images, masks, batch_size=batch_size, device=device)
    scores = masker_score_maps(masker, images, batch_size=batch_size, device=device).half().float()
    pseudo = pseudo_anomaly_maps(ear, masker, images, seed=seed, batch_size=batch_size, device=device)
    return fit_fusion(normal, scores, rule="pseudo", pseudo=pseudo)


def candidate_detectors(parts: FitParts, names: Iterable[str], held: Tensor, manifest: Manifest, *, rate: float,
                        device: torch.device | str = "cpu", batch_size: int = 8,
                        validation: tuple[Tensor, Tensor, Tensor | None, str] | None = None) -> dict[str, Detector]:
    """One calibrated :class:`~fader_kit.deploy.detector.Detector` per score kind of ``names``, from parts
    trained once (:func:`train_parts` with at least those kinds), without retraining anything.

    ``held``: held-out normal images ``[N, 3, S, S]`` (never trained on) that set every kind's
    thresholds at the false-alarm ``rate``; ``manifest``: the fit's manifest, whose ``settings.score``
    each candidate replaces with its kind; ``validation``: ``(images, labels, masks or None, folder)``
    of labelled images, adding the validation AUROC and F1 threshold to each calibration (what a
    caller compares the kinds on)."""
    out: dict[str, Detector] = {}
    kernel = manifest.settings.kernel_size
    for kind in kinds_of(names):
        model = parts.model_for(kind)
        fusion = parts.fusion if kind.fused else None
        if kind.fused and fusion is None:
            raise ValueError("score kind 'fused' needs the fusion scales: pass 'fused' to train_parts")

        def maps_of(images: Tensor, kind: ScoreKind = kind, model: Any = model, fusion: Any = fusion) -> Tensor:
            return batched_maps(kind, images, parts.masker, model, fusion, kernel, batch_size=batch_size,
                                device=device)

        calibration = calibrate(maps_of(held), rate).model_copy(update={"fusion": fusion})
        if validation is not None:
            images, labels, masks, folder = validation
            calibration = validate(calibration, maps_of(images), labels, masks, folder)
        settings = manifest.settings.model_copy(update={"score": kind.name})
        out[kind.name] = Detector(model, parts.masker, calibration, manifest.model_copy(update={"settings": settings}),
                                  device)
    return out
