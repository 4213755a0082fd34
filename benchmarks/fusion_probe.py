"""Fusion rules side by side: how the reconstruction's map and the masker's map are best combined.

For one (data, category, masker) and seeds, with the workbench's cached EAR U-Nets and masks (a bench
``--out`` folder), this scores plain EAR (and optionally head variants, trained again), the masker alone,
and the fused maps of each rule of :func:`fader_kit.model.fusion.fit_fusion` (``sum``, ``max``, ``select``),
every rule fitted on the normal *training* images only (``pseudo``: and on the same images with a
pseudo-anomaly pasted in, masked and scored by the fitted masker).  Each fused row is compared, paired over seeds
and test images, with the better of its two maps alone (the one with the higher mean image AUROC).

Each (variant, seed) is a unit of the engine (job kind ``fusion_probe``, :mod:`fader_kit.engine.jobs`):
its row goes into ``<out>/results.sqlite`` (table ``fusion_probe``) with the per-image score details of
every map beside it, a rerun skips the units already there, and the comparison (printed, and written to
``<out>/fusion_probe.md``) is made from the store. Run::

    python -m fader_kit_bench.fusion_probe --data mvtec:path/to/mpdd --category metal_plate \\
        --masker msflow --seeds 0,1,2 --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fader_kit.model.config import get_profile
from fader_kit.util.devices import resolve_device
from fader_kit.engine import keys
from fader_kit.engine.aggregate import mean_over_seeds, over_seeds
from fader_kit.engine.jobs import Head, JobKind, PlannedUnit, RowFacts, UnitContext, register_job_kind
from fader_kit.engine.runner import Grid, run_grid
from fader_kit.engine.sources import MaskSource, mask_source
from fader_kit.engine.store import DetailStore, ResultRow, ResultStore
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys
from fader_kit.model.fader import FaderModel
from fader_kit.model.fusion import fit_fusion, fuse_maps
from fader_kit.model.pipeline import anomaly_maps, fader_stage, metrics_from_maps, pseudo_anomaly_maps
from fader_kit.engine.stats import ScoreDetail, paired_bootstrap
from fader_kit.model.variants import resolve

RULES = ("sum", "max", "select", "pseudo")
TABLE = "fusion_probe"
MAPS = ("model", "masker", *RULES)


class FusionProbeFacts(RowFacts):
    """What a ``fusion_probe`` row carries: the reconstruction weight each rule fitted (None for a
    rule that does not weigh); the maps' per-image details are stored under :func:`detail_key`."""

    weights: dict[str, float | None] = {}


def detail_key(work_key: str, map_name: str) -> str:
    """Key of the score detail of one map (``model``, ``masker`` or a rule) of a probe row."""
    return f"{work_key}.{map_name}"


def seed_maps(bench: CategoryWorkbench, source: MaskSource, head: Head) -> tuple[dict[str, ScoreDetail], dict]:
    """One seed: the model's and the masker's test maps and each rule's fused map, as score details,
    and the weight each rule fitted."""
    profile, seed, split = bench.settings.profile, bench.settings.seed, bench.split()
    masks, _ = bench.masks(source)
    unet, _ = bench.unet(source)
    if head.config is None:
        model = FaderModel(unet, None, profile.fader_head, head=None)
    else:
        model, _ = fader_stage(unet, split.train, masks.train, head.config, head.train or profile.fader, seed=seed,
                               device=bench.device, scores=masks.train_scores,
                               masker=lambda: bench.fitted_masker(source), masker_name=source.name)
    bs = profile.eval_batch_size
    test = anomaly_maps(model, split.test, masks.test, batch_size=bs, device=bench.device, scores=masks.test_scores)
    normal = anomaly_maps(model, split.train, masks.train, batch_size=bs, device=bench.device,
                          scores=masks.train_scores)
    pseudo = pseudo_anomaly_maps(model, bench.fitted_masker(source), split.train, seed=seed, batch_size=bs,
                                 device=bench.device)
    scores = masks.test_scores.float()
    out = {"model": ScoreDetail.from_maps(test, split.labels, split.masks),
           "masker": ScoreDetail.from_maps(scores, split.labels, split.masks)}
    weights: dict[str, float | None] = {}
    for rule in RULES:
        scales = fit_fusion(normal, masks.train_scores.float(), rule=rule, pseudo=pseudo)
        out[rule] = ScoreDetail.from_maps(fuse_maps(test, scores, scales), split.labels, split.masks)
        weights[rule] = scales.weight if scales.rule == "weighted" else None
    return out, {"metrics": metrics_from_maps(test, split.labels, split.masks), "weights": weights}


class FusionProbeJob(JobKind):
    """One (variant, seed) of the probe (``config=None``: plain EAR), as a unit of the engine."""

    name = TABLE
    facts = FusionProbeFacts

    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        uk = bench.keys(source, head.config, train=head.train)
        return UnitKeys(uk.masks, uk.ear, keys.digest({"fusion_probe": uk.work, "rules": RULES}))

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        context.prepare_masks(pu, bench)
        maps, info = seed_maps(bench, pu.source, pu.head)
        timings, trained = bench.take_work_done()
        details = {detail_key(pu.work_key, name): d for name, d in maps.items()}
        row = ResultRow(**context.row_base(pu), status="ok", timings=timings, **info["metrics"].model_dump(),
                        config=FusionProbeFacts(weights=info["weights"], trained=trained).stored())
        return row, details


register_job_kind(FusionProbeJob())


def probe_grid(args: argparse.Namespace) -> Grid:
    """The probe's grid: one unit per (variant, seed); ``ear`` is plain EAR."""
    profile = get_profile(args.profile)
    heads = tuple(Head(name=v, kind=TABLE, config=None if v == "ear" else resolve(profile.fader_head, v))
                  for v in (v.strip() for v in args.variants.split(",")))
    return Grid(table=TABLE, out=Path(args.out), data=args.data, categories=(args.category,),
                sources=(mask_source(args.masker),), heads=heads, seeds=tuple(int(s) for s in args.seeds.split(",")),
                profile=profile, device=str(resolve_device(args.device)))


def compare(rows: list[ResultRow], details: DetailStore) -> list[dict[str, Any]]:
    """Per rule: the fused map against the better of the two maps alone and against the model, paired
    over the seeds of ``rows`` (one variant's rows, in seed order) and the test images."""
    loaded = [{m: details.load(detail_key(r.work_key, m)) for m in MAPS} for r in rows]
    if any(d is None for seed in loaded for d in seed.values()):
        raise FileNotFoundError(f"score details missing from {details.root} (rerun the probe to recompute them)")
    alone = {k: over_seeds(d[k].image_auroc() for d in loaded).mean for k in ("model", "masker")}  # type: ignore[union-attr]
    better = max(alone, key=lambda k: alone[k])
    out = []
    for rule in RULES:
        after = [d[rule] for d in loaded]
        vs_better = paired_bootstrap([d[better] for d in loaded], after)["image_auroc"]  # type: ignore[misc]
        vs_model = paired_bootstrap([d["model"] for d in loaded], after)["image_auroc"]  # type: ignore[misc]
        out.append({
            "rule": rule, "model_alone": alone["model"], "masker_alone": alone["masker"], "better": better,
            "image_auroc": vs_better.after_mean, "pixel_auroc": mean_over_seeds(a.pixel_auroc() for a in after),  # type: ignore[union-attr]
            "delta_better": vs_better.delta_mean, "ci_better": (vs_better.ci_low, vs_better.ci_high),
            "delta_model": vs_model.delta_mean, "ci_model": (vs_model.ci_low, vs_model.ci_high),
            "weights": [FusionProbeFacts.of(r).weights.get(rule) for r in rows],
        })
    return out


def report(grid: Grid) -> str:
    """The probe's Markdown table, from the store."""
    store = ResultStore(grid.out)
    lines = ["| masker | variant | rule | image / pixel AUROC | map alone: model / masker | Δ image vs better [95 % CI] "
             "| Δ image vs model [95 % CI] | weight w (per seed) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    masker = grid.sources[0].row_name
    for head in grid.heads:
        rows = [r for r in (store.get(_unit(grid, head, seed)) for seed in grid.seeds) if r is not None]
        if len(rows) != len(grid.seeds) or any(r.status != "ok" for r in rows):
            lines.append(f"| {masker} | {head.name} | - | not every seed finished (see the run's log) | | | | |")
            continue
        for c in compare(rows, store.details):
            w = "" if c["weights"][0] is None else ", ".join(f"{x:.2f}" for x in c["weights"])
            lines.append(
                f"| {masker} | {head.name} | {c['rule']} | {c['image_auroc']:.3f} / {c['pixel_auroc']:.3f} | "
                f"{c['model_alone']:.3f} / {c['masker_alone']:.3f} | {c['delta_better']:+.3f} "
                f"[{c['ci_better'][0]:+.3f}, {c['ci_better'][1]:+.3f}] | {c['delta_model']:+.3f} "
                f"[{c['ci_model'][0]:+.3f}, {c['ci_model'][1]:+.3f}] | {w} |")
    return "\n".join(lines)


def _unit(grid: Grid, head: Head, seed: int) -> Any:
    from fader_kit.engine.store import UnitId

    return UnitId(table=grid.table, data=grid.data, profile=grid.profile.name, masker=grid.sources[0].row_name,
                  variant=head.name, category=grid.categories[0], seed=seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--masker", required=True)
    ap.add_argument("--variants", default="ear")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = probe_grid(args)
    run_grid(grid, log=lambda m: print(m, flush=True))
    text = report(grid)
    (grid.out / "fusion_probe.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
