"""``fader-kit evaluate``: a grid of one category (plain EAR and one FADeR head over seeds).

The rows go into the results folder like any table's (table ``evaluate``); the mean, spread and
paired interval come from the one seed aggregation (:mod:`fader_kit.engine.aggregate`).  Written
under ``out``: ``results.sqlite`` and ``details/`` (the rows), ``cache/`` (the same layout and
keys as ``fader-kit bench``, so either command reuses the other's work), ``fader.pt`` (the FADeR
model of the first seed; ``fader-seed<N>.pt`` for each further seed), and finally
``metrics.json`` -- written last and atomically, so its presence means the run completed.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, Field

from ..config import FaderConfig, Profile
from ..diagnostics import Diagnostics
from ..fusion_rules import Fused
from ..interfaces import MaskerInfo
from ..pipeline import Metrics, environment
from ..registry import MaskerRegistry
from ..stats import Comparison, SeedSummary
from ..util.files import write_json_atomic
from .aggregate import EAR, comparisons
from .runner import Grid, GridRunner, Head
from .sources import MaskerSource
from .store import ResultRow, ResultStore
from .workbench import EarMasks

Log = Callable[[str], None]
TABLE = "evaluate"


class SeedResult(BaseModel):
    seed: int
    ear: Metrics
    fader: Metrics
    masker_alone: Metrics | None = None
    ear_fused: Metrics | None = Field(None, description="EAR's map fused with the masker's score map")
    fader_fused: Metrics | None = Field(None, description="FADeR's map fused with the masker's score map")
    diagnostics: Diagnostics | None = Field(None, description="FADeR's head and the masks on the test set")
    timings: dict[str, float] = Field(default_factory=dict)


class EvaluationResult(BaseModel):
    """What ``fader-kit evaluate`` writes to ``metrics.json``: one row per seed, the mean over seeds
    (``ear`` / ``fader`` / ``masker_alone``), their spread, and the paired comparison."""

    data: str
    category: str
    masker: MaskerInfo
    profile: str
    seeds: list[int]
    device: str
    threads: int
    ear_masks: EarMasks
    fader_variant: str = Field(description="the named head variant the FADeR rows trained (fader_kit.variants)")
    fader_config: dict[str, Any] = Field(default_factory=dict)
    ear: Metrics
    fader: Metrics
    masker_alone: Metrics | None = None
    ear_fused: Metrics | None = None
    fader_fused: Metrics | None = None
    spread: dict[str, dict[str, SeedSummary]] = Field(default_factory=dict)
    comparison: dict[str, Comparison] = Field(default_factory=dict)
    fused_comparison: dict[str, dict[str, Comparison]] = Field(
        default_factory=dict, description="'ear_fused' / 'fader_fused' - EAR, paired like `comparison`")
    per_seed: list[SeedResult] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)

    def delta(self) -> dict[str, float]:
        return {k: getattr(self.fader, k) - getattr(self.ear, k) for k in ("image_auroc", "pixel_auroc")}


def _metrics(row: ResultRow) -> Metrics:
    return Metrics(image_auroc=row.image_auroc, pixel_auroc=row.pixel_auroc, pixel_aupro=row.pixel_aupro,
                   image_f1_max=row.image_f1_max)


def _optional(payload: dict[str, Any] | None) -> Metrics | None:
    return Metrics(**payload) if payload else None


def mean_metrics(rows: list[Metrics]) -> Metrics:
    """The mean over seeds of every metric (one :class:`SeedSummary` per metric)."""
    means = {k: SeedSummary.of([getattr(r, k) for r in rows if getattr(r, k) is not None]).mean
             for k in Metrics.model_fields}
    return Metrics(**{k: (None if v != v else v) for k, v in means.items()})


def evaluate_category(
    data: str, category: str, masker: str, profile: Profile, *, out: Path, masker_options: dict[str, Any] | None = None,
    registry: MaskerRegistry | None = None, device: torch.device | str = "cpu", seeds: tuple[int, ...] = (0,),
    ear_masks: EarMasks = "blobs", fader_config: FaderConfig | None = None, fader_variant: str = "paper",
    fused: Fused = False, progress: bool = True, log: Log = print,
) -> EvaluationResult:
    """Per seed: fit the masker, train (or reuse) the EAR U-Net, train FADeR, measure both (and, with
    ``fused``, each fused with the masker's score map); then the mean, spread and paired bootstrap
    interval of FADeR - EAR over the seeds."""
    out = Path(out)
    t_all = time.perf_counter()
    store = ResultStore(out)  # a results folder that is a file fails here, before any work
    (out / "metrics.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
    head = fader_config or profile.fader_head
    source = MaskerSource(masker, dict(masker_options or {}))
    grid = Grid(table=TABLE, out=out, data=str(data), categories=(category,), sources=(source,),
                heads=(Head(name=EAR, title="EAR"), Head(name=fader_variant, title=f"FADeR ({fader_variant})",
                                                        config=head)),
                seeds=tuple(seeds), profile=profile, device=str(device), ear_masks=ear_masks, fused=fused,
                save_models=True, progress=progress)
    runner = GridRunner(grid, registry=registry, log=log, fail_fast=True)  # one model: its error is the command's
    units = runner.plan()
    runner.run()
    rows = {(r.unit.variant, r.unit.seed): r for r in (store.get(u.unit) for u in units) if r is not None}
    per_seed = []
    for seed in seeds:
        e, f = rows[(EAR, seed)], rows[(fader_variant, seed)]
        model = out / str(f.config["model"])
        shutil.copyfile(model, out / ("fader.pt" if seed == seeds[0] else f"fader-seed{seed}.pt"))
        diag = f.config.get("diagnostics")
        per_seed.append(SeedResult(
            seed=seed, ear=_metrics(e), fader=_metrics(f), masker_alone=_optional(e.config.get("masker_alone")),
            ear_fused=_optional(e.config.get("fused")), fader_fused=_optional(f.config.get("fused")),
            diagnostics=Diagnostics(**diag) if diag else None,
            timings={k: e.timings.get(k, 0.0) + f.timings.get(k, 0.0) for k in {*e.timings, *f.timings}}))
    comps = {str(c["variant"]): c for c in comparisons(list(rows.values()), store.details)}
    main, spread = comps[fader_variant], {}
    for name, prefix, comp in (("ear", "ear", main), ("fader", "after", main), ("masker_alone", "alone", main),
                               ("ear_fused", "after", comps.get(f"{EAR}+masker")),
                               ("fader_fused", "after", comps.get(f"{fader_variant}+masker"))):
        if comp is not None and comp.get(f"{prefix}_image_auroc") is not None:
            spread[name] = {k: comp[f"{prefix}_{k}"] for k in ("image_auroc", "pixel_auroc")}
    fused_comparison = {name: comps[label]["comparison"] for name, label in
                        (("ear_fused", f"{EAR}+masker"), ("fader_fused", f"{fader_variant}+masker"))
                        if label in comps and "comparison" in comps[label]}

    def mean_of(name: str) -> Metrics | None:
        got = [getattr(r, name) for r in per_seed if getattr(r, name) is not None]
        return mean_metrics(got) if len(got) == len(per_seed) else None

    info = MaskerInfo(**rows[(EAR, seeds[0])].config["masker_info"])
    result = EvaluationResult(
        data=str(data), category=category, masker=info, profile=profile.name, seeds=list(seeds), device=str(device),
        threads=torch.get_num_threads(), ear_masks=ear_masks, fader_variant=fader_variant,
        fader_config=head.model_dump(mode="json"), ear=mean_metrics([r.ear for r in per_seed]),
        fader=mean_metrics([r.fader for r in per_seed]), masker_alone=mean_of("masker_alone"),
        ear_fused=mean_of("ear_fused"), fader_fused=mean_of("fader_fused"), spread=spread,
        comparison=main.get("comparison") or {}, fused_comparison=fused_comparison, per_seed=per_seed,
        timings={"total": time.perf_counter() - t_all}, environment=environment(),
    )
    write_json_atomic(out / "metrics.json", result.model_dump(mode="json"))
    return result


__all__ = ["EvaluationResult", "SeedResult", "evaluate_category", "mean_metrics"]
