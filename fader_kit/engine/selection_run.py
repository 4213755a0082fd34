"""Measure every score kind of one masker as a selection candidate: its pseudo AUROC on held-out
normal images (the selection score, no test label read) and its test AUROC (read afterwards, to
judge the choice).

The held-out images are a seeded share of the *normal training* images
(:func:`fader_kit.deploy.selection.holdout_split`); the masker and every kind's parts
(:func:`fader_kit.deploy.fit_parts.train_parts`) fit on the rest, so no candidate is judged on an image it
trained on.  ``fader-kit evaluate --select`` reports the result per seed in ``metrics.json``
(:class:`~fader_kit.engine.selection_report.SelectionReport`); the selection study
(``python -m fader_kit_bench.selection_study``) measures the same per masker, over maskers.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from fader_kit.model.config import FaderConfig, Profile
from fader_kit.deploy.fit_parts import FitParts, kinds_of, shared_ear_unet, train_parts, trained_on
from fader_kit.model.metrics import image_auroc, pixel_auroc
from fader_kit.data.pseudo_defects import DEFAULT_KINDS, DEFAULT_SIZE
from fader_kit.deploy.score_kinds import SCORE_NAMES, ScoreKind, batched_maps, fused_twin
from fader_kit.deploy.selection import build_pseudo_sets, holdout_split, pseudo_aurocs
from fader_kit.engine.selection_report import SelectionReport, selection_report

KERNEL = 21  # the detectors' default MSGMS kernel (fader_kit.deploy.detector.DetectorSettings.kernel_size)
Log = Callable[[str], None]


@dataclass
class CandidateMeasure:
    """One candidate's numbers: pseudo AUROC per defect kind (image, pixel), their mean (the
    selection score), test image / pixel AUROC and test images per second; ``same_as``: the kind
    this one is in all but name (a fused score with all its weight on one map,
    :func:`~fader_kit.deploy.score_kinds.fused_twin`), which a selection leaves out of the race."""

    name: str
    pseudo: dict[str, float]
    pseudo_pixel: dict[str, float]
    selection_score: float
    test_image_auroc: float
    test_pixel_auroc: float
    images_per_s: float
    trained_on: tuple[str, ...] = field(default_factory=tuple)
    same_as: str | None = None


def selection_kinds(names: Iterable[str], head: FaderConfig, kinds: Sequence[str] = DEFAULT_KINDS) -> list[str]:
    """The pseudo-defect ``kinds`` every candidate of the score kinds ``names`` can be judged on: none
    that one of them trained on (:func:`fader_kit.deploy.fit_parts.trained_on`)."""
    trained = {k for kind in kinds_of(names) for k in trained_on(kind, head)}
    return [k for k in kinds if k not in trained]


def score_candidates(parts: FitParts, names: Iterable[str], held: Tensor, test: tuple[Tensor, Tensor, Tensor], *,
                     head: FaderConfig, seed: int, kinds: Sequence[str], size: float = DEFAULT_SIZE, copies: int = 3,
                     batch_size: int = 8, device: torch.device | str = "cpu") -> list[CandidateMeasure]:
    """Every score kind of ``names`` from ``parts``: pseudo AUROC on the held-out normal ``held``
    images against themselves with pseudo-defects of ``kinds`` (``copies`` each, seeded by ``seed``),
    and image / pixel AUROC on ``test`` = (images, labels, ground-truth masks)."""
    images, labels, masks = test
    sets = build_pseudo_sets(held, seed, kinds, size, copies)
    out = []
    measured: set[str] = {k.name for k in kinds_of(names)}
    for kind in kinds_of(names):
        model, fusion = parts.model_for(kind), parts.fusion if kind.fused else None

        def score(x: Tensor, kind: ScoreKind = kind, model: Any = model, fusion: Any = fusion) -> tuple[Tensor, Tensor]:
            maps = batched_maps(kind, x, parts.masker, model, fusion, KERNEL, batch_size=batch_size, device=device)
            return maps.flatten(1).amax(1), maps

        t0 = time.perf_counter()
        scores, maps = score(images)
        ips = images.shape[0] / (time.perf_counter() - t0)
        image, pixel = pseudo_aurocs(score, held, sets)
        out.append(CandidateMeasure(
            name=kind.name, pseudo=image, pseudo_pixel=pixel, selection_score=sum(image.values()) / len(image),
            test_image_auroc=image_auroc(scores, labels), test_pixel_auroc=pixel_auroc(maps, masks),
            images_per_s=ips, trained_on=trained_on(kind, head), same_as=twin_of(kind, parts, measured)))
    return out


def twin_of(kind: ScoreKind, parts: FitParts, measured: set[str]) -> str | None:
    """The measured kind that ``kind`` is in all but name (only a fused kind can be one), or None."""
    twin = fused_twin(parts.fusion) if kind.fused else None
    return twin if twin in measured else None


@dataclass
class MaskerCandidates:
    """Every score kind of one masker measured as a selection candidate: the measures, what fitting
    each kind alone costs (the masker's fit plus the U-Net, head or fusion on top; seconds), and how
    many normal images were fitted on and held out."""

    measures: list[CandidateMeasure]
    fit_s: dict[str, float]
    n_fit: int
    n_held: int


def fit_seconds(kind: ScoreKind, masker_s: float, parts: FitParts, ear_s: float) -> float:
    """What fitting ``kind`` alone costs: the masker, plus the U-Net, plus the head or the fusion."""
    s = parts.seconds
    if not kind.unet:
        return masker_s
    return masker_s + s.get("ear", ear_s) + (s.get("fader", 0.0) if kind.head else 0.0) + (
        s.get("fusion", 0.0) if kind.fused else 0.0)


def measure_masker(
    split: Any, masker: str, profile: Profile, head: FaderConfig, *, registry: Any, seed: int, device: torch.device,
    masker_options: dict[str, Any] | None = None, ear_masks: str = "blobs", holdout: float = 0.2,
    kinds: Sequence[str] = DEFAULT_KINDS, size: float = DEFAULT_SIZE, copies: int = 3, batch_size: int | None = None,
    ear_cache: Path | None = None, log: Log = print,
) -> MaskerCandidates:
    """Hold a seeded share of ``split``'s normal training images out, fit ``masker`` and every score
    kind's parts on the rest and measure each kind (:func:`score_candidates`).  With ``ear_masks="blobs"``
    the EAR U-Net does not depend on the masker: ``ear_cache`` (a file) lets the maskers of one
    category and seed, measured one after another, share one training
    (:func:`fader_kit.deploy.fit_parts.shared_ear_unet`)."""
    from fader_kit.deploy.fit import fitted_masker

    fit_idx, held_idx = holdout_split(split.train.shape[0], holdout, seed)
    train = split.train[fit_idx]
    t0 = time.perf_counter()
    m = fitted_masker(registry, masker, dict(masker_options or {}), train, seed=seed, device=device, progress=False)
    masker_s = time.perf_counter() - t0
    unet, ear_s = (shared_ear_unet(train, profile, seed=seed, device=device, cache=ear_cache)
                   if ear_masks == "blobs" else (None, 0.0))
    parts = train_parts(SCORE_NAMES, train, m, masker, profile=profile, head=head, ear_masks=ear_masks, seed=seed,
                        device=device, log=log, unet=unet)
    found = score_candidates(parts, SCORE_NAMES, split.train[held_idx], (split.test, split.labels, split.masks),
                             head=head, seed=seed, kinds=selection_kinds(SCORE_NAMES, head, kinds), size=size,
                             copies=copies, batch_size=batch_size or profile.eval_batch_size, device=device)
    fit_s = {c.name: fit_seconds(kinds_of([c.name])[0], masker_s, parts, ear_s) for c in found}
    return MaskerCandidates(found, fit_s, len(fit_idx), len(held_idx))


def measure_selection(
    data: str, category: str, masker: str, profile: Profile, head: FaderConfig, *, registry: Any, seed: int,
    device: torch.device, masker_options: dict[str, Any] | None = None, ear_masks: str = "blobs",
    holdout: float = 0.2, copies: int = 3, log: Log = print,
) -> SelectionReport:
    """Measure every score kind of ``masker`` on ``category`` (:func:`measure_masker`) and report the choice."""
    from fader_kit.data import load_category

    split = load_category(data, category, profile.image_size, seed=seed)
    found = measure_masker(split, masker, profile, head, registry=registry, seed=seed, device=device,
                           masker_options=masker_options, ear_masks=ear_masks, holdout=holdout, copies=copies,
                           log=log).measures
    return selection_report({c.name: c.selection_score for c in found},
                            {c.name: (c.test_image_auroc, c.test_pixel_auroc) for c in found},
                            pseudo={c.name: c.pseudo for c in found},
                            twins={c.name: c.same_as for c in found if c.same_as is not None})


__all__ = ["CandidateMeasure", "MaskerCandidates", "fit_seconds", "measure_masker", "measure_selection", "score_candidates",
           "selection_kinds", "twin_of"]
