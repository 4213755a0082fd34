"""The trained maskers on real photographs and synthetic categories, several seeds, resumable.

For every category, masker and seed the masker is created as ``fader-kit`` creates it
(``create_masker(name, device=..., **options)``), fitted on the category's normal training
images at the cpu profile's image size (128 px unless ``--image-size``), then measured on the
test set.  One row per (category, masker, seed):

- ``fit_s`` / ``fit_cpu_s``: wall and process CPU time of ``fit()`` (training + threshold);
- ``mask_ms``: wall time of ``mask()`` over the test set, per image (batches of ``--batch``);
- ``pixel_auroc`` / ``aupro``: of ``score_map()`` as a segmenter (AUPRO to FPR 0.3);
- ``image_auroc``: the score map's maximum per image as the image score;
- ``masked``: share of test pixels in the binary mask; ``tpr`` / ``fpr``: share of defect /
  normal test pixels inside it (coverage of defects vs of normal pixels);
- ``threads``, ``load_before`` / ``load_after`` (1-min load average), ``cpus``: the conditions;
- ``codebook`` / ``centres``...: ``MaskerInfo.details`` (which variant ran);
- for ``ami_net``, ``k_sweep``: the token mask's TPR / FPR at other ``k_sigma`` values
  (``--k-sigmas``), same fitted model;
- ``diagnostics``: pixel and image AUROC of the masker's intermediate maps
  (``diagnostic_maps()``: DSR's coarse segmentation and reconstruction gap, AMI-Net's centre
  distance), to see which stage localises a defect and which loses it.

The benchmark is a grid of the engine (:mod:`fader_kit.engine`) whose units measure the masker
alone: rows go into ``<out>/results.sqlite`` (table ``trained_maskers``) as soon as each is
measured, with the score details beside them; a rerun with the same ``--out`` skips the rows
already there, so an interrupted run resumes, and ``--executor ray`` runs the units as Ray tasks.
``rows.csv`` and the summary (mean and sample standard deviation over seeds, printed as Markdown
and written to ``<out>/summary.md``) are made from the store.

A masker spec is a registered name, optionally with options: ``ami_net:centres=kmeans`` or
``dsr:codebook=category:epochs=20`` (values parsed as JSON, else kept as strings); the spec is
the row's label.

::

    python -m fader_kit_bench.trained_maskers --data mvtec:path/to/mpdd --category metal_plate \\
        --seeds 0 1 2 --threads 1 --out results/trained-maskers
    python -m fader_kit_bench.trained_maskers --data synthetic --category weave cells --seeds 0 \\
        --maskers patch_stats msflow ami_net ami_net:centres=kmeans --out results/trained-maskers

Timings depend on what else runs on the machine: the load is recorded beside them.  On a shared
machine prefer ``--threads 1``: with two OpenMP threads and a busy second core every small
convolution waits for the other thread (DSR's many small layers ran over ten times slower).
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from fader_kit.model.config import get_profile
from fader_kit.data import list_categories
from fader_kit.util.devices import resolve_device
from fader_kit.engine.aggregate import over_seeds
from fader_kit.engine.runner import Grid, GridRunner, Head, PlannedUnit, run_grid
from fader_kit.engine.sources import parse_spec
from fader_kit.engine.store import DB_NAME, ResultStore
from fader_kit.engine.workbench import CategoryWorkbench
from fader_kit.errors import ConfigError
from fader_kit.model.metrics import image_auroc, pixel_auroc
from fader_kit.engine.stats import SeedSummary
from fader_kit.util.batching import map_batches

from .masker_rows import MaskerRow, MaskerSummary

DEFAULT_MASKERS = ("patch_stats", "dsr", "msflow", "ami_net")
DEFAULT_K_SIGMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METRICS = ("fit_s", "fit_cpu_s", "mask_ms", "pixel_auroc", "aupro", "image_auroc", "masked", "tpr", "fpr")
CSV_FIELDS = (
    "data", "category", "masker", "seed", "image_size", "weights", "variant", *METRICS,
    "threads", "load_before", "load_after", "n_train", "n_test", "device",
)
TABLE = "trained_maskers"


def _variant(details: dict[str, Any]) -> str:
    """The details that say which variant of a masker ran (codebook, centres, k_sigma, ...)."""
    keys = ("codebook", "output", "centres", "k_sigma", "mask_rule")
    return " ".join(f"{k}={details[k]}" for k in keys if k in details)


def coverage(binary: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Share of all / defect / normal pixels inside a binary mask."""
    return {
        "masked": float(binary.float().mean()),
        "tpr": float(binary[gt].float().mean()),
        "fpr": float(binary[~gt].float().mean()),
    }


def k_sigma_sweep(
    masker: Any, images: torch.Tensor, gt: torch.Tensor, ks: Iterable[float], batch: int, device: Any,
    rule: str = "tokens",
) -> dict[str, list[float]]:
    """AMI-Net's token mask (``rule``: by centre distance or by inpainting score) at other ``k_sigma``
    values on the same fitted model: {k: [tpr, fpr, masked]}."""
    original = masker.config
    out = {}
    try:
        for k in ks:
            masker.config = original.model_copy(update={"k_sigma": float(k)})
            binary = map_batches(lambda x: masker.token_mask(x, rule), images, batch_size=batch, device=device)
            c = coverage(binary, gt)
            out[f"{k:g}"] = [c["tpr"], c["fpr"], c["masked"]]
    finally:
        masker.config = original
    return out


@dataclass(frozen=True)
class MaskerMeasures:
    """What this benchmark adds to a masker-alone row: the intermediate maps' AUROC (which stage
    localises, which loses it) and, for AMI-Net, its token mask's coverage at other ``k_sigma``."""

    k_sigmas: tuple[float, ...] = DEFAULT_K_SIGMAS

    def __call__(self, runner: GridRunner, pu: PlannedUnit, bench: CategoryWorkbench, masker: Any) -> dict[str, Any]:
        split, bs, device = bench.split(), runner.grid.profile.eval_batch_size, bench.device
        info = masker.info
        out: dict[str, Any] = {"variant": _variant(info.details), "details": info.details}
        diagnostics = getattr(masker, "diagnostic_maps", None)
        if diagnostics is not None:
            out["diagnostics"] = {
                key: {"pixel_auroc": pixel_auroc(m, split.masks), "image_auroc": image_auroc(m.flatten(1).amax(1), split.labels)}
                for key, m in diagnostics(split.test).items()
            }
        if pu.source.name == "ami_net" and self.k_sigmas:
            gt = split.masks.bool()
            out["k_sweep"] = k_sigma_sweep(masker, split.test, gt, self.k_sigmas, bs, device)
            out["k_sweep_score"] = k_sigma_sweep(masker, split.test, gt, self.k_sigmas, bs, device, "score_tokens")
            out["k_sweep_mad"] = k_sigma_sweep(masker, split.test, gt, (*self.k_sigmas, 4.0, 5.0), bs, device,
                                               "score_mad")
        return out


def benchmark_grid(specs: Sequence[str], *, data: str, categories: Sequence[str] | None, seeds: Sequence[int],
                   out: Path, image_size: int | None = None, device: str = "cpu", progress: bool = False) -> Grid:
    """The benchmark as a grid of masker-alone units (one per category, masker spec and seed)."""
    profile = get_profile("cpu")
    if image_size is not None:
        profile = profile.model_copy(update={"image_size": image_size})
    sources = tuple(parse_spec(spec) for spec in specs)  # a bad spec fails before any fit
    return Grid(table=TABLE, out=out, data=data, categories=tuple(categories or list_categories(data)[:1]),
                sources=sources, heads=(Head(name="alone", kind="masker", title="the masker alone"),),
                seeds=tuple(int(s) for s in seeds), profile=profile, device=str(resolve_device(device)),
                progress=progress)


def read_rows(out: Path) -> list[MaskerRow]:
    """The finished rows of this benchmark in ``out`` (none when there is no store yet)."""
    if not (out / DB_NAME).is_file():
        return []
    return [MaskerRow.of(r) for r in ResultStore(out).rows() if r.unit.table == TABLE and r.status == "ok"]


def write_csv(rows: Sequence[MaskerRow], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.model_dump() for r in rows)
    return path


# -- the summary ------------------------------------------------------------------------------
def summarise(rows: Sequence[MaskerRow]) -> list[MaskerSummary]:
    """One entry per (data, category, masker, image size): every metric over the seeds."""
    groups: dict[tuple[str, str, str, int | None], list[MaskerRow]] = {}
    for r in rows:
        groups.setdefault((r.data, r.category, r.masker, r.image_size), []).append(r)
    return [MaskerSummary(
        data=data, category=category, masker=masker, image_size=size, seeds=sorted(r.seed for r in rs),
        weights=rs[0].weights, variant=rs[0].variant, threads=sorted({r.threads for r in rs}),
        load=(min(min(r.load_before, r.load_after) for r in rs), max(max(r.load_before, r.load_after) for r in rs)),
        metrics={m: over_seeds(r.metric(m) for r in rs) for m in METRICS},
    ) for (data, category, masker, size), rs in groups.items()]


def _cell(s: SeedSummary, digits: int) -> str:
    return f"{s.mean:.{digits}f}" if s.n < 2 else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def table(summary: Sequence[MaskerSummary]) -> str:
    """A Markdown table of :func:`summarise` entries (mean ± std over the listed seeds)."""
    head = (
        "| category | masker | variant | seeds | fit s (wall / CPU) | mask ms/img | pixel AUROC | AUPRO "
        "| image AUROC (max) | masked | TPR | FPR | threads | load |\n"
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for e in summary:
        m = e.metrics
        lines.append(
            f"| {e.category} | `{e.masker}` | {e.variant or e.weights} | {','.join(map(str, e.seeds))} "
            f"| {_cell(m['fit_s'], 0)} / {m['fit_cpu_s'].mean:.0f} | {_cell(m['mask_ms'], 1)} "
            f"| {_cell(m['pixel_auroc'], 3)} | {_cell(m['aupro'], 3)} | {_cell(m['image_auroc'], 3)} "
            f"| {_cell(m['masked'], 3)} | {_cell(m['tpr'], 3)} | {_cell(m['fpr'], 3)} "
            f"| {','.join(map(str, e.threads))} | {e.load[0]:.1f}-{e.load[1]:.1f} |"
        )
    return "\n".join(lines)


def sweep_table(rows: Sequence[MaskerRow]) -> str:
    """AMI-Net's token-mask coverage per ``k_sigma`` (mean over seeds): TPR / FPR, for the rule by
    centre distance (``k_sweep``) and by inpainting score (``k_sweep_score``)."""
    groups: dict[tuple[str, str, str], list[dict[str, list[float]]]] = {}
    for r in rows:
        for sweep, rule in ((r.k_sweep, "distance, mean+k std"), (r.k_sweep_score, "score, mean+k std"),
                            (r.k_sweep_mad, "score, median+k MAD")):
            if sweep is not None:
                groups.setdefault((r.category, r.masker, rule), []).append(sweep)
    if not groups:
        return ""
    ks = sorted({k for sweeps in groups.values() for sw in sweeps for k in sw}, key=float)
    lines = [
        "| category | masker | token rule on | " + " | ".join(f"k={k} TPR / FPR" for k in ks) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for (category, masker, rule), sweeps in groups.items():
        cells = []
        for k in ks:
            vals = [sw[k] for sw in sweeps if k in sw]
            if not vals:
                cells.append("–")
                continue
            tpr, fpr = over_seeds(v[0] for v in vals).mean, over_seeds(v[1] for v in vals).mean
            cells.append(f"{tpr:.3f} / {fpr:.3f}")
        lines.append(f"| {category} | `{masker}` | {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(rows: Sequence[MaskerRow]) -> str:
    """Pixel and image AUROC of each masker's intermediate maps (``diagnostics`` of the rows), beside
    its score map's: mean ± std over seeds."""
    groups: dict[tuple[str, str, str], list[tuple[float | None, float | None]]] = {}
    for r in rows:
        if not r.diagnostics:
            continue
        groups.setdefault((r.category, r.masker, "score map (the output)"), []).append((r.pixel_auroc, r.image_auroc))
        for key, d in r.diagnostics.items():
            groups.setdefault((r.category, r.masker, key), []).append((d["pixel_auroc"], d["image_auroc"]))
    if not groups:
        return ""
    lines = ["| category | masker | map | seeds | pixel AUROC | image AUROC (max) |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for (category, masker, key), vals in groups.items():
        px, im = over_seeds(v[0] for v in vals), over_seeds(v[1] for v in vals)
        lines.append(f"| {category} | `{masker}` | {key} | {len(vals)} | {_cell(px, 3)} | {_cell(im, 3)} |")
    return "\n".join(lines)


def run(
    specs: Sequence[str], *, data: str, categories: Sequence[str] | None, seeds: Sequence[int], out: Path,
    image_size: int | None = None, device: str = "cpu", k_sigmas: Sequence[float] = DEFAULT_K_SIGMAS,
    progress: bool = False, executor: str = "serial", ray_options: Any = None, registry: Any = None,
) -> list[MaskerRow]:
    """Measure every (category, masker, seed) not yet in ``out``; return all the benchmark's rows there."""
    grid = benchmark_grid(specs, data=data, categories=categories, seeds=seeds, out=out, image_size=image_size,
                          device=device, progress=progress)
    measure = MaskerMeasures(tuple(float(k) for k in k_sigmas))
    if executor == "ray":
        from fader_kit.engine.ray import run_grid_ray

        run_grid_ray(grid, ray_options, registry=registry, log=_err, measure=measure)
    else:
        run_grid(grid, registry=registry, log=_err, measure=measure)
    rows = read_rows(out)
    write_csv(rows, out / "rows.csv")
    return rows


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.trained_maskers", description=__doc__.split("\n\n")[0])
    p.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS), help="specs NAME[:KEY=VALUE]...")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--category", nargs="+", default=None, help="default: the first category of --data")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=None, help="default: the cpu profile's (128)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: shared machines)")
    p.add_argument("--k-sigmas", nargs="*", type=float, default=list(DEFAULT_K_SIGMAS),
                   help="ami_net: token-mask coverage at these k_sigma values too (none: skip)")
    p.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="run the units in this process or as Ray tasks (the same rows)")
    p.add_argument("--cpus-per-unit", type=float, default=1.0, help="--executor ray: CPUs (and threads) per unit")
    p.add_argument("--out", type=Path, default=Path("results/trained-maskers"),
                   help="results folder (results.sqlite, rows.csv, summary.md); rows already there are skipped")
    p.add_argument("--summary-only", action="store_true", help="only print the summary of --out")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    try:
        for spec in args.maskers:
            parse_spec(spec)
    except ConfigError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    if args.summary_only:
        rows = read_rows(args.out)
        if not rows:
            p.error(f"--summary-only: no rows in {args.out}")
    else:
        options = None
        if args.executor == "ray":
            from fader_kit.engine.ray import RayOptions

            options = RayOptions(cpus_per_unit=args.cpus_per_unit)
        rows = run(
            args.maskers, data=args.data, categories=args.category, seeds=args.seeds, out=args.out,
            image_size=args.image_size, device=args.device, k_sigmas=args.k_sigmas, progress=args.progress,
            executor=args.executor, ray_options=options,
        )
    text = table(summarise(rows))
    sweep = sweep_table(rows)
    if sweep:
        text += "\n\nami_net token mask, coverage of defect / normal pixels by k_sigma (mean over seeds):\n\n" + sweep
    diag = diagnostics_table(rows)
    if diag:
        text += "\n\nintermediate maps of the maskers (which stage localises):\n\n" + diag
    print(text)
    (args.out / "summary.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
