"""What each FADeR head *can* learn, before any detector AUROC.

For each head variant, trained on one (data, category, masker, seed) exactly as the benchmarks train
it (the same workbench, cache and EAR U-Net), this reports:

- ``rho_own``: Spearman rank correlation between l_hat and the variant's own training target
  (``target``: gated / ungated reconstruction of the trained model, or plain EAR's error) on the
  *held-out* normal patches: the unmasked patches of the normal test images;
- ``rho_ear``: the same against the error plain EAR makes (eval mode): the error the gates exist to
  prevent;
- ``auroc_missed``: the AUROC of l_hat for the defect patches the mask missed against normal patches
  (:mod:`fader_kit.model.diagnostics`), and the mean gates there;
- the detector's image / pixel AUROC of that one run (one seed: direction only).

A reference row ``EAR error (oracle)`` scores the true EAR patch error itself.

The probe is a job kind of the engine (``head_probe``, :mod:`fader_kit.engine.jobs`): each variant
is a unit of a grid, its row goes into ``<out>/results.sqlite`` (table ``head_probe``) the moment it
is measured, a rerun skips the rows already there, and the table printed at the end (and written
to ``<out>/head_probe.md``) is made from the store. Run::

    python -m fader_kit_bench.head_probe --data mvtec:path/to/mpdd --category metal_plate \\
        --masker patch_stats --variants paper,stats_ear,score_gates --seed 0 --out DIR
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fader_kit.model.config import get_profile
from fader_kit.util.devices import resolve_device
from fader_kit.model.diagnostics import head_diagnostics
from fader_kit.engine import keys
from fader_kit.engine.jobs import Head, JobKind, PlannedUnit, RowFacts, UnitContext, register_job_kind
from fader_kit.engine.runner import Grid, run_grid
from fader_kit.engine.sources import MaskSource, mask_source
from fader_kit.engine.store import ResultRow, ResultStore
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys
from fader_kit.model.fader import FaderModel, patch_errors, unmasked_patches
from fader_kit.model.obfuscation import obfuscate
from fader_kit.util.batching import device_batches
from fader_kit.model.variants import canonical_name, head_strategies, resolve

TABLE = "head_probe"
ORACLE = "EAR error (oracle)"


class HeadProbeFacts(RowFacts):
    """What a ``head_probe`` row carries besides the detector's AUROC."""

    target: str = ""
    rho_own: float | None = None
    rho_ear: float | None = None
    auroc_missed: float | None = None
    gate_missed: float | None = None
    gate_normal_defective: float | None = None
    gate_normal_images: float | None = None
    unmasked_defect_patches: int | None = None
    train_seconds: float | None = None
    cpu_seconds: float | None = None


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order: fine for continuous values)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


@torch.no_grad()
def patch_targets(model: FaderModel, unet: torch.nn.Module, x: Tensor, mb: Tensor, s: Tensor | None) -> dict[str, Tensor]:
    """Patch errors ``[B, N]`` of the trained model's gated and un-gated reconstructions and of plain EAR."""
    m = model.patch_size
    model.eval()
    unet.eval()
    out = model(x, mb, scores=s)
    rec = model.reconstructor
    return {
        "gated": patch_errors(x, out.reconstruction, m),
        "ungated": patch_errors(x, rec.decode(rec.encode(out.obfuscated)), m),
        "ear": patch_errors(x, unet(obfuscate(x, mb, m)), m),
    }


def probe_variant(bench: CategoryWorkbench, source: MaskSource, head: Head) -> tuple[HeadProbeFacts, Any]:
    """The probe of one head variant: its facts and the detector's metrics of that run."""
    cfg = head.config
    assert cfg is not None  # the oracle is probed by oracle_facts
    t0 = time.process_time()
    ev = bench.evaluate(source, cfg, diagnostics=True)
    cpu = time.process_time() - t0
    split, masks = bench.split(), ev.masks
    unet, _ = bench.unet(source)
    model = ev.model
    normal = ~split.labels.bool()
    xs, mbs = split.test[normal], masks.test[normal]
    ss = masks.test_scores[normal] if masks.test_scores is not None else None
    preds, tg = [], {"gated": [], "ungated": [], "ear": []}
    valid = []
    batches = device_batches(xs, mbs, *((ss,) if ss is not None else ()), batch_size=8, device=bench.device)
    for x, mb, *sc in batches:
        sc_ = sc[0].float() if sc and model.needs_scores else None
        p, _ = model.head_outputs(x, mb, sc_)
        preds.append(p.cpu())
        for k, v in patch_targets(model, unet, x, mb, sc_).items():
            tg[k].append(v.cpu())
        valid.append(unmasked_patches(mb, model.patch_size).cpu())
    keep = torch.cat(valid)
    pred = torch.cat(preds)[keep]
    targets = {k: torch.cat(v)[keep] for k, v in tg.items()}
    own = cfg.target
    assert ev.diagnostics is not None and ev.diagnostics.head is not None  # a FADeR head, diagnosed
    d = ev.diagnostics.head
    return HeadProbeFacts(
        target=own if head_strategies(cfg).gates.learned else "none (masker score)",
        rho_own=spearman(pred, targets[own]), rho_ear=spearman(pred, targets["ear"]),
        auroc_missed=d.auroc_unmasked_defect, gate_missed=d.gate_unmasked_defect,
        gate_normal_defective=d.gate_normal_defective, gate_normal_images=d.gate_normal_images,
        train_seconds=ev.timings.get("fader_train"), cpu_seconds=cpu), ev.metrics


def oracle_facts(bench: CategoryWorkbench, source: MaskSource) -> HeadProbeFacts:
    """The true plain-EAR patch error as l_hat: what a perfect head would rank."""
    split = bench.split()
    masks, _ = bench.masks(source)
    unet, _ = bench.unet(source)
    unet.eval()
    m = bench.settings.profile.fader_head.patch_size
    with torch.no_grad():
        errs = [patch_errors(x, unet(obfuscate(x, mb, m)), m).cpu()
                for x, mb in device_batches(split.test, masks.test, batch_size=8, device=bench.device)]
    pred = torch.cat(errs)
    grid = torch.ones(pred.shape[0], 1, split.test.shape[-2] // m, split.test.shape[-1] // m)
    d = head_diagnostics(pred, grid, masks.test, split.masks, split.labels, m)
    return HeadProbeFacts(target="ear", rho_own=1.0, rho_ear=1.0, auroc_missed=d.auroc_unmasked_defect,
                          unmasked_defect_patches=d.unmasked_defect_patches)


class HeadProbeJob(JobKind):
    """One head variant probed (``config=None``: the oracle row), as a unit of the engine."""

    name = TABLE
    facts = HeadProbeFacts

    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        uk = bench.keys(source, head.config, train=head.train)
        return UnitKeys(uk.masks, uk.ear, keys.digest({"head_probe": uk.work}))

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        context.prepare_masks(pu, bench)
        if pu.head.config is None:
            facts, metrics = oracle_facts(bench, pu.source), {}
        else:
            facts, m = probe_variant(bench, pu.source, pu.head)
            metrics = {"image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc}
        timings, facts.trained = bench.take_work_done()
        row = ResultRow(**context.row_base(pu), status="ok", timings=timings, config=facts.stored(), **metrics)
        return row, {}


register_job_kind(HeadProbeJob())


def probe_grid(args: argparse.Namespace) -> Grid:
    """The probe's grid: the oracle row and one unit per ``--variants`` entry."""
    profile = get_profile(args.profile)
    names = [canonical_name(v.strip()) for v in args.variants.split(",")]
    heads = (Head(name=ORACLE, kind=TABLE),
             *(Head(name=v, kind=TABLE, config=resolve(profile.fader_head, v)) for v in names))
    return Grid(table=TABLE, out=Path(args.out), data=args.data, categories=(args.category,),
                sources=(mask_source(args.masker),), heads=heads, seeds=(args.seed,), profile=profile,
                device=str(resolve_device(args.device)))


def report(rows: list[ResultRow]) -> str:
    """The probe's Markdown table, from stored rows."""
    def f(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| variant | target | rho own (held-out normal) | rho vs EAR error | l_hat AUROC missed | gates missed / "
             "normal px defective / normal images | image / pixel AUROC |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p = HeadProbeFacts.of(r)
        gates = " / ".join(f(v) for v in (p.gate_missed, p.gate_normal_defective, p.gate_normal_images))
        lines.append(f"| {r.unit.variant} | {p.target} | {f(p.rho_own)} | {f(p.rho_ear)} | {f(p.auroc_missed)} | "
                     f"{gates} | {f(r.image_auroc)} / {f(r.pixel_auroc)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--masker", default="patch_stats")
    ap.add_argument("--variants", default="paper,ear_target,stats,stats_ear,encoder_ear,stats_score_ear,score_gates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="results folder (a bench --out folder reuses its masks and U-Nets)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = probe_grid(args)
    run_grid(grid, log=lambda m: print(m, flush=True))
    order = {h.name: i for i, h in enumerate(grid.heads)}
    rows = sorted((r for r in ResultStore(grid.out).rows() if r.status == "ok" and r.unit.table == TABLE
                   and r.unit.variant in order and (r.unit.category, r.unit.seed) == (args.category, args.seed)
                   and r.unit.masker == grid.sources[0].row_name), key=lambda r: order[r.unit.variant])
    text = report(rows)
    (grid.out / "head_probe.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
