"""Typed rows of the trained-masker benchmark (:mod:`fader_kit_bench.trained_maskers`): a stored
masker-alone row as its tables read it, and one summary line over seeds."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from fader_kit.engine.store import ResultRow
from fader_kit.engine.unit_kinds import MaskerFacts
from fader_kit.engine.stats import SeedSummary


class TrainedMaskerFacts(MaskerFacts):
    """A masker row's facts with what :class:`MaskerMeasures` adds."""

    variant: str = ""
    details: dict[str, Any] = {}
    diagnostics: dict[str, dict[str, float]] | None = None
    k_sweep: dict[str, list[float]] | None = None
    k_sweep_score: dict[str, list[float]] | None = None
    k_sweep_mad: dict[str, list[float]] | None = None


class MaskerRow(BaseModel):
    """One (category, masker spec, seed) of this benchmark, as its tables and ``rows.csv`` read it."""

    data: str = ""
    category: str
    masker: str
    seed: int = 0
    image_size: int | None = None
    weights: str | None = None
    variant: str = ""
    details: dict[str, Any] = {}
    fit_s: float = math.nan
    fit_cpu_s: float = math.nan
    mask_ms: float = math.nan
    pixel_auroc: float | None = None
    aupro: float | None = None
    image_auroc: float | None = None
    masked: float = math.nan
    tpr: float = math.nan
    fpr: float = math.nan
    threads: int = 0
    load_before: float = math.nan
    load_after: float = math.nan
    n_train: int | None = None
    n_test: int | None = None
    device: str | None = None
    diagnostics: dict[str, dict[str, float]] | None = None
    k_sweep: dict[str, list[float]] | None = None
    k_sweep_score: dict[str, list[float]] | None = None
    k_sweep_mad: dict[str, list[float]] | None = None

    @classmethod
    def of(cls, row: ResultRow) -> "MaskerRow":
        f = TrainedMaskerFacts.of(row)
        u = row.unit
        return cls(data=u.data, category=u.category, masker=u.masker, seed=u.seed, image_size=f.image_size,
                   weights=row.weights, variant=f.variant, details=f.details, fit_s=f.fit_s, fit_cpu_s=f.fit_cpu_s,
                   mask_ms=f.mask_ms, pixel_auroc=row.pixel_auroc, aupro=row.pixel_aupro, image_auroc=row.image_auroc,
                   masked=f.masked, tpr=f.tpr, fpr=f.fpr, threads=int(row.environment.get("threads", 0)),
                   load_before=f.load[0], load_after=f.load[1], n_train=f.n_train, n_test=f.n_test,
                   device=row.device, diagnostics=f.diagnostics, k_sweep=f.k_sweep, k_sweep_score=f.k_sweep_score,
                   k_sweep_mad=f.k_sweep_mad)

    def metric(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None else float(value)


class MaskerSummary(BaseModel):
    """One (data, category, masker spec, image size): every metric over the seeds."""

    data: str
    category: str
    masker: str
    image_size: int | None
    seeds: list[int]
    weights: str | None
    variant: str
    threads: list[int]
    load: tuple[float, float]
    metrics: dict[str, SeedSummary]


__all__ = ["MaskerRow", "MaskerSummary", "TrainedMaskerFacts"]
