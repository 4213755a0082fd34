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

Rows are appended to ``<out>/rows.jsonl`` (and ``rows.csv``) as soon as each is measured; a rerun
with the same ``--out`` skips the rows already there, so an interrupted run resumes.  The summary
(mean and sample standard deviation over seeds) is printed as Markdown and written to
``<out>/summary.md``.

A masker spec is a registered name, optionally with options: ``ami_net:centres=kmeans`` or
``dsr:codebook=category:epochs=20`` (values parsed as JSON, else kept as strings); the spec is
the row's label.

::

    python -m fader_kit_bench.trained_maskers --data mvtec:/work/shared/data/mpdd --category metal_plate \\
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
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

DEFAULT_MASKERS = ("patch_stats", "dsr", "msflow", "ami_net")
DEFAULT_K_SIGMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METRICS = ("fit_s", "fit_cpu_s", "mask_ms", "pixel_auroc", "aupro", "image_auroc", "masked", "tpr", "fpr")
CSV_FIELDS = (
    "data", "category", "masker", "seed", "image_size", "weights", "variant", *METRICS,
    "threads", "cpus", "load_before", "load_after", "n_train", "n_test", "device",
)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value]...`` -> (name, options); values parsed as JSON when they parse."""
    name, *items = spec.split(":")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"masker spec {spec!r}: expected NAME[:KEY=VALUE]..., got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if not name:
        raise ValueError(f"masker spec {spec!r} has no masker name")
    return name, options


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _variant(details: dict[str, Any]) -> str:
    """The details that say which variant of a masker ran (codebook, centres, k_sigma, ...)."""
    keys = ("codebook", "output", "centres", "k_sigma", "mask_rule")
    return " ".join(f"{k}={details[k]}" for k in keys if k in details)


def _in_batches(fn: Any, images: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([fn(images[s : s + batch].to(device)).cpu() for s in range(0, images.shape[0], batch)])


def coverage(binary: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Share of all / defect / normal pixels inside a binary mask."""
    return {
        "masked": float(binary.float().mean()),
        "tpr": float(binary[gt].float().mean()),
        "fpr": float(binary[~gt].float().mean()),
    }


def k_sigma_sweep(
    masker: Any, images: torch.Tensor, gt: torch.Tensor, ks: Iterable[float], batch: int, device: str,
    rule: str = "tokens",
) -> dict[str, list[float]]:
    """AMI-Net's token mask (``rule``: by centre distance or by inpainting score) at other ``k_sigma``
    values on the same fitted model: {k: [tpr, fpr, masked]}."""
    original = masker.config
    out = {}
    try:
        for k in ks:
            masker.config = original.model_copy(update={"k_sigma": float(k)})
            c = coverage(_in_batches(lambda x: masker.token_mask(x, rule), images, batch, device), gt)
            out[f"{k:g}"] = [c["tpr"], c["fpr"], c["masked"]]
    finally:
        masker.config = original
    return out


def measure_one(
    spec: str, split: Any, *, seed: int, data: str | None = None, device: str = "cpu", batch: int = 8,
    k_sigmas: Sequence[float] = DEFAULT_K_SIGMAS, progress: bool = False,
) -> dict[str, Any]:
    """Fit one masker on ``split.train`` with ``seed`` and measure it on the test set (one row;
    ``data``: the data spec recorded in it, default the split's dataset name)."""
    from fader_kit.metrics import aupro, image_auroc, pixel_auroc
    from fader_kit.registry import create_masker

    name, options = parse_spec(spec)
    gt = split.masks.bool()
    load_before = _load()
    masker = create_masker(name, device=device, **options)
    t, c = time.perf_counter(), time.process_time()
    masker.fit(split.train.to(device), seed=seed, progress=progress)
    fit_s, fit_cpu_s = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    binary = _in_batches(masker.mask, split.test, batch, device)
    mask_s = time.perf_counter() - t
    maps = _in_batches(masker.score_map, split.test, batch, device)
    info = masker.info
    row: dict[str, Any] = {
        "data": data or split.dataset, "category": split.category, "masker": spec, "seed": seed,
        "image_size": split.image_size, "weights": info.weights, "variant": _variant(info.details),
        "details": info.details, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s,
        "mask_ms": 1000 * mask_s / split.test.shape[0],
        "pixel_auroc": pixel_auroc(maps, split.masks), "aupro": aupro(maps, split.masks),
        "image_auroc": image_auroc(maps.flatten(1).amax(1), split.labels),
        **coverage(binary, gt),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_before": load_before,
        "n_train": int(split.train.shape[0]), "n_test": int(split.test.shape[0]), "device": device,
    }
    diagnostics = getattr(masker, "diagnostic_maps", None)
    if diagnostics is not None:  # which stage of the masker localises, and which loses it
        row["diagnostics"] = {
            key: {"pixel_auroc": pixel_auroc(m, split.masks), "image_auroc": image_auroc(m.flatten(1).amax(1), split.labels)}
            for key, m in diagnostics(split.test).items()
        }
    if name == "ami_net" and k_sigmas:
        row["k_sweep"] = k_sigma_sweep(masker, split.test, gt, k_sigmas, batch, device)
        row["k_sweep_score"] = k_sigma_sweep(masker, split.test, gt, k_sigmas, batch, device, "score_tokens")
        row["k_sweep_mad"] = k_sigma_sweep(masker, split.test, gt, (*k_sigmas, 4.0, 5.0), batch, device, "score_mad")
    row["load_after"] = _load()
    return row


# -- the results file -------------------------------------------------------------------------
def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, int]:
    return (str(row["data"]), str(row["category"]), str(row["masker"]), int(row["seed"]), int(row["image_size"]))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``rows.jsonl`` file (a torn last line from an interrupted run is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to ``out/rows.jsonl`` and ``out/rows.csv`` (header written once)."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "rows.jsonl"
    torn = jsonl.is_file() and jsonl.stat().st_size > 0 and not jsonl.read_bytes().endswith(b"\n")
    with jsonl.open("a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(row) + "\n")  # never continue a torn line
    path = out / "rows.csv"
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


# -- the summary ------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (data, category, masker, image size): mean and std of every metric over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(row_key(r)[:3] + (row_key(r)[4],), []).append(r)
    out = []
    for (data, category, masker, size), rs in groups.items():
        entry: dict[str, Any] = {
            "data": data, "category": category, "masker": masker, "image_size": size,
            "seeds": sorted(int(r["seed"]) for r in rs), "weights": rs[0]["weights"], "variant": rs[0]["variant"],
            "threads": sorted({r["threads"] for r in rs}),
            "load": (min(min(r["load_before"], r["load_after"]) for r in rs),
                     max(max(r["load_before"], r["load_after"]) for r in rs)),
        }
        for m in METRICS:
            entry[m] = mean_std([float(r[m]) for r in rs])
        out.append(entry)
    return out


def _cell(ms: tuple[float, float], digits: int, n: int) -> str:
    mean, std = ms
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise` entries (mean ± std over the listed seeds)."""
    head = (
        "| category | masker | variant | seeds | fit s (wall / CPU) | mask ms/img | pixel AUROC | AUPRO "
        "| image AUROC (max) | masked | TPR | FPR | threads | load |\n"
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for e in summary:
        n = len(e["seeds"])
        lines.append(
            f"| {e['category']} | `{e['masker']}` | {e['variant'] or e['weights']} | {','.join(map(str, e['seeds']))} "
            f"| {_cell(e['fit_s'], 0, n)} / {e['fit_cpu_s'][0]:.0f} | {_cell(e['mask_ms'], 1, n)} "
            f"| {_cell(e['pixel_auroc'], 3, n)} | {_cell(e['aupro'], 3, n)} | {_cell(e['image_auroc'], 3, n)} "
            f"| {_cell(e['masked'], 3, n)} | {_cell(e['tpr'], 3, n)} | {_cell(e['fpr'], 3, n)} "
            f"| {','.join(map(str, e['threads']))} | {e['load'][0]:.1f}-{e['load'][1]:.1f} |"
        )
    return "\n".join(lines)


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """AMI-Net's token-mask coverage per ``k_sigma`` (mean over seeds): TPR / FPR, for the rule by
    centre distance (``k_sweep``) and by inpainting score (``k_sweep_score``)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        for field, rule in (("k_sweep", "distance, mean+k std"), ("k_sweep_score", "score, mean+k std"),
                            ("k_sweep_mad", "score, median+k MAD")):
            if field in r:
                groups.setdefault((r["category"], r["masker"], rule), []).append(r[field])
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
            tpr, fpr = mean_std([v[0] for v in vals])[0], mean_std([v[1] for v in vals])[0]
            cells.append(f"{tpr:.3f} / {fpr:.3f}")
        lines.append(f"| {category} | `{masker}` | {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(rows: Sequence[dict[str, Any]]) -> str:
    """Pixel and image AUROC of each masker's intermediate maps (``diagnostics`` of the rows), beside
    its score map's: mean ± std over seeds."""
    groups: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if not r.get("diagnostics"):
            continue
        groups.setdefault((r["category"], r["masker"], "score map (the output)"), []).append(
            (r["pixel_auroc"], r["image_auroc"]))
        for key, d in r["diagnostics"].items():
            groups.setdefault((r["category"], r["masker"], key), []).append((d["pixel_auroc"], d["image_auroc"]))
    if not groups:
        return ""
    lines = ["| category | masker | map | seeds | pixel AUROC | image AUROC (max) |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for (category, masker, key), vals in groups.items():
        n = len(vals)
        px, im = mean_std([v[0] for v in vals]), mean_std([v[1] for v in vals])
        lines.append(f"| {category} | `{masker}` | {key} | {n} | {_cell(px, 3, n)} | {_cell(im, 3, n)} |")
    return "\n".join(lines)


def run(
    specs: Sequence[str], *, data: str, categories: Sequence[str] | None, seeds: Sequence[int], out: Path,
    image_size: int | None = None, device: str = "cpu", batch: int = 8,
    k_sigmas: Sequence[float] = DEFAULT_K_SIGMAS, progress: bool = False,
) -> list[dict[str, Any]]:
    """Measure every (category, masker, seed) not yet in ``out/rows.jsonl``; return all rows there."""
    from fader_kit.config import get_profile
    from fader_kit.data import list_categories, load_category

    for spec in specs:
        parse_spec(spec)  # fail on a bad spec before any fit
    size = image_size or get_profile("cpu").image_size
    done = {row_key(r) for r in read_rows(out / "rows.jsonl")}
    for category in categories or list_categories(data)[:1]:
        split = None
        for spec in specs:
            for seed in seeds:
                if (data, category, spec, int(seed), size) in done:
                    continue
                if split is None:
                    split = load_category(data, category, size, seed=0, progress=progress)
                row = measure_one(spec, split, seed=int(seed), data=data, device=device, batch=batch, k_sigmas=k_sigmas,
                                  progress=progress)
                append_row(out, row)
                done.add(row_key(row))
                print(f"{category} {spec} seed {seed}: fit {row['fit_s']:.1f} s (CPU {row['fit_cpu_s']:.1f} s), "
                      f"pixel AUROC {row['pixel_auroc']:.3f}, AUPRO {row['aupro']:.3f}, image AUROC "
                      f"{row['image_auroc']:.3f}, TPR {row['tpr']:.3f} FPR {row['fpr']:.3f}, load "
                      f"{row['load_before']:.1f}->{row['load_after']:.1f}", file=sys.stderr, flush=True)
    return read_rows(out / "rows.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.trained_maskers", description=__doc__.split("\n\n")[0])
    p.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS), help="specs NAME[:KEY=VALUE]...")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--category", nargs="+", default=None, help="default: the first category of --data")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=None, help="default: the cpu profile's (128)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: shared machines)")
    p.add_argument("--k-sigmas", nargs="*", type=float, default=list(DEFAULT_K_SIGMAS),
                   help="ami_net: token-mask coverage at these k_sigma values too (none: skip)")
    p.add_argument("--out", type=Path, default=Path("results/trained-maskers"),
                   help="folder of rows.jsonl / rows.csv / summary.md; rows already there are skipped")
    p.add_argument("--summary-only", action="store_true", help="only print the summary of --out")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    try:
        for spec in args.maskers:
            parse_spec(spec)
    except ValueError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    if args.summary_only:
        rows = read_rows(args.out / "rows.jsonl")
        if not rows:
            p.error(f"--summary-only: no rows in {args.out / 'rows.jsonl'}")
    else:
        rows = run(
            args.maskers, data=args.data, categories=args.category, seeds=args.seeds, out=args.out,
            image_size=args.image_size, device=args.device, batch=args.batch, k_sigmas=args.k_sigmas,
            progress=args.progress,
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
