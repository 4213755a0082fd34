"""The built-in job kinds (:mod:`fader_kit.engine.jobs`): a scored model, and the masker alone.

- ``model``: plain EAR (no head) or a FADeR head on the category's EAR U-Net and masks, scored on
  the test set (optionally fused with the masker's score map); its row's facts are
  :class:`ModelFacts`.
- ``masker``: the masker alone -- its score map as the detector, its binary mask's coverage of
  defect and normal pixels, the fit's and the mask's cost; no U-Net.  Facts: :class:`MaskerFacts`.
"""
from __future__ import annotations

import os
import time
from typing import Any

from fader_kit.model.diagnostics import Diagnostics
from fader_kit.model.fusion import FusionScales
from fader_kit.maskers.interfaces import MaskerInfo
from fader_kit.model.pipeline import Metrics, compute_masks, masker_score_maps, metrics_from_maps
from fader_kit.engine.stats import ScoreDetail
from fader_kit.engine import keys
from fader_kit.engine.jobs import Head, JobKind, PlannedUnit, RowFacts, UnitContext, register_job_kind
from fader_kit.engine.sources import MaskSource
from fader_kit.engine.store import ResultRow
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys


class ModelFacts(RowFacts):
    """What a ``model`` row carries: where its masks and U-Net came from, the head it trained, the
    masker alone and the fused score beside it, the head's diagnostics, its figure and saved model."""

    masker_options: dict[str, Any] = {}
    masker_info: MaskerInfo | None = None
    masker_key: str = ""
    ear_key: str = ""
    fader: dict[str, Any] | None = None
    fader_train: dict[str, Any] | None = None
    profile_digest: str = ""
    image_size: int = 0
    ear_masks: str = "blobs"
    masked_fraction_test: float | None = None
    masker_alone: Metrics | None = None
    fused: Metrics | None = None
    fusion: FusionScales | None = None
    diagnostics: Diagnostics | None = None
    figure: str | None = None
    model: str | None = None


class MaskerFacts(RowFacts):
    """What a ``masker`` row carries: the fit's cost (``fit_s`` / ``fit_cpu_s`` when it was fitted in
    this run), the mask's cost per test image, the binary mask's coverage (``masked``; ``tpr`` /
    ``fpr``: share of defect / normal pixels inside it), the set sizes, the load before and after;
    a benchmark's measure hook adds its own fields (``variant``, ``diagnostics``, ``k_sweep``...)."""

    masker_options: dict[str, Any] = {}
    masker_info: MaskerInfo | None = None
    masker_key: str = ""
    image_size: int = 0
    fit_s: float = float("nan")
    fit_cpu_s: float = float("nan")
    mask_ms: float = float("nan")
    masked: float = float("nan")
    tpr: float = float("nan")
    fpr: float = float("nan")
    n_train: int | None = None
    n_test: int | None = None
    load: list[float] = [float("nan"), float("nan")]


def load_average() -> float:
    """The 1-minute load average (timings depend on what else runs), NaN where unknown."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


class ModelJob(JobKind):
    """Plain EAR or a FADeR head, trained and scored (see the module docstring)."""

    name = "model"
    facts = ModelFacts

    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        return bench.keys(source, head.config, train=head.train, fused=context.grid.fused)

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        g, head = context.grid, pu.head.config
        context.prepare_masks(pu, bench)
        ev = bench.evaluate(pu.source, head, train=pu.head.train, fused=g.fused)
        details: dict[str, Any] = dict(ev.details)
        alone = bench.masker_alone(pu.source)
        if alone is not None:
            details[keys.alone_key(pu.keys.masks)] = alone[1]
        figure = (context.figure(context, pu, bench, ev) if context.figure is not None and head is not None
                  and g.figures > 0 else None)
        model_path = None
        if g.save_models and head is not None:
            model_path = ev.model.save(context.out / "models" / f"{pu.work_key}.pt")
        masks = ev.masks
        facts = ModelFacts(
            masker_options=dict(pu.source.options), masker_info=masks.info, masker_key=pu.keys.masks,
            ear_key=pu.keys.ear, fader=head.model_dump(mode="json") if head is not None else None,
            fader_train=(pu.head.train or g.profile.fader).model_dump(mode="json") if head is not None else None,
            profile_digest=g.profile.digest(), image_size=g.profile.image_size, ear_masks=g.ear_masks,
            masked_fraction_test=float(masks.test.float().mean()), masker_alone=alone[0] if alone is not None else None,
            fused=ev.fused, fusion=ev.fusion, diagnostics=ev.diagnostics,
            figure=str(figure.relative_to(context.out)) if figure is not None else None,
            model=str(model_path.relative_to(context.out)) if model_path is not None else None,
            trained=dict(ev.trained))
        row = ResultRow(**context.row_base(pu), status="ok", weights=masks.info.weights, timings=dict(ev.timings),
                        config=facts.stored(), **ev.metrics.model_dump())
        return row, details


class MaskerAloneJob(JobKind):
    """The masker alone (see the module docstring); the grid's ``measure`` hook adds measurements."""

    name = "masker"
    facts = MaskerFacts
    needs_unet = False

    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        masks = bench.masks_key(source)
        return UnitKeys(masks, "", keys.digest({"masker_alone": masks}))

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        context.prepare_masks(pu, bench)
        g, split = context.grid, bench.split()
        load_before = load_average()
        masks, _ = bench.masks(pu.source)
        masker = bench.fitted_masker(pu.source)
        bs = g.profile.eval_batch_size
        t = time.perf_counter()
        binary = compute_masks(masker, split.test, batch_size=bs, device=bench.device)
        mask_s = time.perf_counter() - t
        maps = masker_score_maps(masker, split.test, batch_size=bs, device=bench.device)
        metrics = metrics_from_maps(maps, split.labels, split.masks)
        gt = split.masks.bool()
        config: dict[str, Any] = {
            "masker_options": dict(pu.source.options), "masker_info": masks.info.model_dump(mode="json"),
            "masker_key": pu.keys.masks, "image_size": g.profile.image_size, **masks.timings,
            "mask_ms": 1000 * mask_s / split.test.shape[0], "masked": float(binary.float().mean()),
            "tpr": float(binary[gt].float().mean()), "fpr": float(binary[~gt].float().mean()),
            "n_train": int(split.train.shape[0]), "n_test": int(split.test.shape[0]),
        }
        if context.measure is not None:
            config.update(context.measure(context, pu, bench, masker))
        config["load"] = [load_before, load_average()]
        shared, config["trained"] = bench.take_work_done()
        details = {keys.alone_key(pu.keys.masks): ScoreDetail.from_maps(maps, split.labels, split.masks)}
        row = ResultRow(**context.row_base(pu), status="ok", weights=masks.info.weights, timings=shared,
                        config=MaskerFacts.model_validate(config).stored(), **metrics.model_dump())
        return row, details


MODEL = register_job_kind(ModelJob())
MASKER = register_job_kind(MaskerAloneJob())

__all__ = ["MASKER", "MODEL", "MaskerAloneJob", "MaskerFacts", "ModelFacts", "ModelJob", "load_average"]
