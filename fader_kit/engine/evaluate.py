"""``fader-kit evaluate``: a grid of one category (plain EAR and one FADeR head over seeds).

The rows go into the results folder like any table's (table ``evaluate``); the mean, spread and
paired interval come from the one seed aggregation (:mod:`fader_kit.engine.aggregate`).  Written
under ``out``: ``results.sqlite`` and ``details/`` (the rows), ``cache/`` (the same layout and
keys as ``fader-kit bench``, so either command reuses the other's work), ``fader.pt`` (the FADeR
model of the first seed; ``fader-seed<N>.pt`` for each further seed), and finally
``metrics.json`` -- written last and atomically, so its presence means the run completed.
With ``select``, each seed's row also carries the ``selection`` section
(:mod:`fader_kit.engine.selection_run`): every score kind of the masker fitted again on four fifths
of the normal images, chosen on the held-out fifth with pseudo-defects, against its test AUROC.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, Field

from fader_kit.model.config import Profile
from fader_kit.model.diagnostics import Diagnostics
from fader_kit.errors import ConfigError
from fader_kit.model.fusion_rules import Fused
from fader_kit.maskers.interfaces import MaskerInfo
from fader_kit.model.pipeline import Metrics, environment
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.engine.stats import Comparison, SeedSummary
from fader_kit.util.files import write_json_atomic
from fader_kit.engine.aggregate import EAR, comparisons, mean_metrics
from fader_kit.engine.runner import Grid, GridRunner, Head
from fader_kit.engine.selection_report import SelectionReport
from fader_kit.engine.sources import MaskerSource
from fader_kit.engine.store import ResultRow, ResultStore
from fader_kit.engine.unit_kinds import ModelFacts
from fader_kit.engine.workbench import EarMasks

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
    selection: SelectionReport | None = Field(
        None, description="with --select: the score kinds refitted on 4/5 of the normal images, their selection "
                          "scores (pseudo-defects on the held-out 1/5), the one chosen, its test AUROC, the regret")
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
    fader_variant: str = Field(description="the named head variant the FADeR rows trained (fader_kit.model.variants)")
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


def evaluation_grid(data: str, category: str, source: MaskerSource, profile: Profile, head: Head, *, out: Path,
                    device: str, seeds: tuple[int, ...], ear_masks: EarMasks, fused: Fused, progress: bool) -> Grid:
    """The grid of ``fader-kit evaluate``: plain EAR and ``head`` over ``seeds``, models kept."""
    title = head.title or f"FADeR ({head.name})"
    return Grid(table=TABLE, out=out, data=str(data), categories=(category,), sources=(source,),
                heads=(Head(name=EAR, title="EAR"), head.model_copy(update={"title": title})),
                seeds=tuple(seeds), profile=profile, device=device, ear_masks=ear_masks, fused=fused,
                save_models=True, progress=progress)


def evaluate_category(
    data: str, category: str, masker: str, profile: Profile, *, out: Path, head: Head | None = None,
    masker_options: dict[str, Any] | None = None, registry: MaskerRegistry | None = None,
    device: torch.device | str = "cpu", seeds: tuple[int, ...] = (0,), ear_masks: EarMasks = "blobs",
    fused: Fused = False, progress: bool = True, log: Log = print, select: bool = False,
) -> EvaluationResult:
    """Per seed: fit the masker, train (or reuse) the EAR U-Net, train the FADeR ``head`` (a resolved
    variant: its name and configuration; default the profile's head as ``paper``), measure both (and,
    with ``fused``, each fused with the masker's score map); then the mean, spread and paired
    bootstrap interval of FADeR - EAR over the seeds.  ``select``: per seed, the selection section
    (:func:`fader_kit.engine.selection_run.measure_selection`; it trains every score kind again)."""
    out = Path(out)
    t_all = time.perf_counter()
    store = ResultStore(out)  # a results folder that is a file fails here, before any work
    (out / "metrics.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
    head = head if head is not None else Head(name="paper", config=profile.fader_head)
    if head.config is None or head.kind != "model":
        raise ConfigError(f"evaluate_category: head {head.name!r} must be a FADeR head (a model with a configuration)")
    grid = evaluation_grid(data, category, MaskerSource(masker, dict(masker_options or {})), profile, head, out=out,
                           device=str(device), seeds=tuple(seeds), ear_masks=ear_masks, fused=fused,
                           progress=progress)
    runner = GridRunner(grid, registry=registry, log=log, fail_fast=True)  # one model: its error is the command's
    units = runner.plan()
    runner.run()
    rows = {(r.unit.variant, r.unit.seed): r for r in (store.get(u.unit) for u in units) if r is not None}
    per_seed = [_seed_result(out, seed, rows[(EAR, seed)], rows[(head.name, seed)], first=seed == seeds[0])
                for seed in seeds]
    if select:
        from fader_kit.maskers.registry import default_registry
        from fader_kit.engine.selection_run import measure_selection

        for row in per_seed:
            row.selection = measure_selection(
                str(data), category, masker, profile, head.config, registry=registry or default_registry(),
                seed=row.seed, device=torch.device(device), masker_options=masker_options, ear_masks=ear_masks, log=log)
    result = _summarise(rows, per_seed, store, head, data=str(data), category=category, profile=profile,
                        device=str(device), ear_masks=ear_masks)
    result.timings["total"] = time.perf_counter() - t_all
    write_json_atomic(out / "metrics.json", result.model_dump(mode="json"))
    return result


def _seed_result(out: Path, seed: int, ear: ResultRow, fader: ResultRow, *, first: bool) -> SeedResult:
    """One seed's EAR and FADeR rows; the FADeR model is copied to ``fader.pt`` (``fader-seed<N>.pt``)."""
    e, f = ModelFacts.of(ear), ModelFacts.of(fader)
    shutil.copyfile(out / str(f.model), out / ("fader.pt" if first else f"fader-seed{seed}.pt"))
    return SeedResult(
        seed=seed, ear=_metrics(ear), fader=_metrics(fader), masker_alone=e.masker_alone, ear_fused=e.fused,
        fader_fused=f.fused, diagnostics=f.diagnostics,
        timings={k: ear.timings.get(k, 0.0) + fader.timings.get(k, 0.0) for k in {*ear.timings, *fader.timings}})


def _summarise(rows: dict[tuple[str, int], ResultRow], per_seed: list[SeedResult], store: ResultStore, head: Head,
               *, data: str, category: str, profile: Profile, device: str, ear_masks: EarMasks) -> EvaluationResult:
    """The mean over seeds, the spread and the paired comparisons (the one seed aggregation)."""
    name = head.name
    comps = {c.variant: c for c in comparisons(list(rows.values()), store.details)}
    main, spread = comps[name], {}
    for key, which, comp in (("ear", "ear", main), ("fader", "after", main), ("masker_alone", "alone", main),
                             ("ear_fused", "after", comps.get(f"{EAR}+masker")),
                             ("fader_fused", "after", comps.get(f"{name}+masker"))):
        summaries = comp.summaries(which) if comp is not None else None
        if summaries is not None:
            spread[key] = {k: summaries[k] for k in ("image_auroc", "pixel_auroc")}
    fused_comparison = {key: comparison for key, label in
                        (("ear_fused", f"{EAR}+masker"), ("fader_fused", f"{name}+masker"))
                        if label in comps and (comparison := comps[label].comparison) is not None}

    def mean_of(field: str) -> Metrics | None:
        got = [getattr(r, field) for r in per_seed if getattr(r, field) is not None]
        return mean_metrics(got) if len(got) == len(per_seed) else None

    info = ModelFacts.of(rows[(EAR, per_seed[0].seed)]).masker_info
    assert info is not None and head.config is not None  # a model row always names its masker
    return EvaluationResult(
        data=data, category=category, masker=info, profile=profile.name, seeds=[r.seed for r in per_seed],
        device=device, threads=torch.get_num_threads(), ear_masks=ear_masks, fader_variant=name,
        fader_config=head.config.model_dump(mode="json"), ear=mean_metrics([r.ear for r in per_seed]),
        fader=mean_metrics([r.fader for r in per_seed]), masker_alone=mean_of("masker_alone"),
        ear_fused=mean_of("ear_fused"), fader_fused=mean_of("fader_fused"), spread=spread,
        comparison=main.comparison or {}, fused_comparison=fused_comparison, per_seed=per_seed,
        timings={}, environment=environment(),
    )


__all__ = ["EvaluationResult", "SeedResult", "evaluate_category", "evaluation_grid", "mean_metrics"]
