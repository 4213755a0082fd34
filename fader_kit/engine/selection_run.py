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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from fader_kit.model.config import FaderConfig, Profile
from fader_kit.deploy.fit_parts import FitParts, kinds_of, train_parts, trained_on
from fader_kit.model.metrics import image_auroc, pixel_auroc
from fader_kit.data.pseudo_defects import DEFAULT_KINDS, DEFAULT_SIZE
from fader_kit.deploy.score_kinds import SCORE_NAMES, ScoreKind, batched_maps
from fader_kit.deploy.selection import build_pseudo_sets, holdout_split, pseudo_aurocs
from fader_kit.engine.selection_report import SelectionReport, selection_report

KERNEL = 21  # the detectors' default MSGMS kernel (fader_kit.deploy.detector.DetectorSettings.kernel_size)
Log = Callable[[str], None]


@dataclass
class CandidateMeasure:
    """One candidate's numbers: pseudo AUROC per defect kind (image, pixel), their mean (the
    selection score), test image / pixel AUROC and test images per second."""

    name: str
    pseudo: dict[str, float]
    pseudo_pixel: dict[str, float]
    selection_score: float
    test_image_auroc: float
    test_pixel_auroc: float
    images_per_s: float
    trained_on: tuple[str, ...] = field(default_factory=tuple)


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
            images_per_s=ips, trained_on=trained_on(kind, head)))
    return out


def measure_selection(
    data: str, category: str, masker: str, profile: Profile, head: FaderConfig, *, registry: Any, seed: int,
    device: torch.device, masker_options: dict[str, Any] | None = None, ear_masks: str = "blobs",
    holdout: float = 0.2, copies: int = 3, log: Log = print,
) -> SelectionReport:
    """Hold a share of ``category``'s normal training images out, fit ``masker`` and every score
    kind's parts on the rest, measure each kind (:func:`score_candidates`) and report the choice."""
    from fader_kit.data import load_category
    from fader_kit.deploy.fit import fitted_masker

    split = load_category(data, category, profile.image_size, seed=seed)
    fit_idx, held_idx = holdout_split(split.train.shape[0], holdout, seed)
    train = split.train[fit_idx]
    m = fitted_masker(registry, masker, dict(masker_options or {}), train, seed=seed, device=device, progress=False)
    parts = train_parts(SCORE_NAMES, train, m, masker, profile=profile, head=head, ear_masks=ear_masks, seed=seed,
                        device=device, log=log)
    kinds = selection_kinds(SCORE_NAMES, head)
    found = score_candidates(parts, SCORE_NAMES, split.train[held_idx], (split.test, split.labels, split.masks),
                             head=head, seed=seed, kinds=kinds, copies=copies,
                             batch_size=profile.eval_batch_size, device=device)
    return selection_report({c.name: c.selection_score for c in found},
                            {c.name: (c.test_image_auroc, c.test_pixel_auroc) for c in found},
                            pseudo={c.name: c.pseudo for c in found})


__all__ = ["CandidateMeasure", "measure_selection", "score_candidates", "selection_kinds"]
