"""Fit time, mask time and pixel AUROC of the trained maskers next to ``patch_stats``.

For one synthetic category (default: the first of ``list_categories("synthetic")``) at the cpu
profile's image size (128 px), each masker is created as ``fader-kit`` creates it
(``create_masker(name, device=...)``, default options), fitted on the category's normal training
images, and then

- ``fit_s``: wall time of ``fit()`` (training + threshold calibration);
- ``mask_ms``: wall time of ``mask()`` over the test set, per image (batches of ``--batch``);
- ``pixel_auroc``: of ``score_map()`` as a segmenter on the test set (fader_kit.metrics);
- ``masked``: share of test pixels in the binary mask; ``tpr`` / ``fpr``: share of defect /
  normal test pixels inside it.

::

    python -m fader_kit_bench.trained_maskers --threads 2
    python -m fader_kit_bench.trained_maskers --maskers msflow --category washer --json out.json

Timings depend on what else runs on the machine: report the load next to them.  On a shared
machine prefer ``--threads 1``: with two OpenMP threads and a busy second core every small
convolution waits for the other thread, and DSR's many small layers ran over ten times slower.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

DEFAULT_MASKERS = ("patch_stats", "dsr", "msflow", "ami_net")


def measure(
    names: Sequence[str] = DEFAULT_MASKERS,
    *,
    data: str = "synthetic",
    category: str | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    batch: int = 8,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per masker (see the module docstring for the columns)."""
    from fader_kit.config import get_profile
    from fader_kit.data import list_categories, load_category
    from fader_kit.metrics import pixel_auroc
    from fader_kit.registry import create_masker

    size = image_size or get_profile("cpu").image_size
    category = category or list_categories(data)[0]
    split = load_category(data, category, size, seed=seed, progress=progress)
    gt = split.masks.bool()
    rows = []
    for name in names:
        masker = create_masker(name, device=device, **(options or {}).get(name, {}))
        t = time.perf_counter()
        masker.fit(split.train.to(device), seed=seed, progress=progress)
        fit_s = time.perf_counter() - t
        masks, maps = [], []
        t = time.perf_counter()
        for start in range(0, split.test.shape[0], batch):
            masks.append(masker.mask(split.test[start : start + batch].to(device)).cpu())
        mask_s = time.perf_counter() - t
        for start in range(0, split.test.shape[0], batch):
            maps.append(masker.score_map(split.test[start : start + batch].to(device)).cpu())
        binary = torch.cat(masks)
        rows.append({
            "masker": name, "weights": masker.info.weights, "category": category, "image_size": size,
            "n_train": int(split.train.shape[0]), "n_test": int(split.test.shape[0]), "device": device,
            "threads": torch.get_num_threads(), "fit_s": fit_s,
            "mask_ms": 1000 * mask_s / split.test.shape[0],
            "pixel_auroc": pixel_auroc(torch.cat(maps), split.masks),
            "masked": float(binary.float().mean()),
            "tpr": float(binary[gt].float().mean()), "fpr": float(binary[~gt].float().mean()),
        })
        print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def format_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['masker']} | {r['weights']} | {r['fit_s']:.1f} | {r['mask_ms']:.1f} | {r['pixel_auroc']:.4f} "
        f"| {r['masked']:.3f} | {r['tpr']:.3f} | {r['fpr']:.3f} |"
    )


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`measure` rows."""
    head = (
        "| masker | weights | fit s | mask ms/img | pixel AUROC | masked | TPR | FPR |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    return "\n".join([head, *(format_row(r) for r in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.trained_maskers", description=__doc__.split("\n\n")[0])
    p.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS))
    p.add_argument("--data", default="synthetic")
    p.add_argument("--category", default=None, help="default: the first category of --data")
    p.add_argument("--image-size", type=int, default=None, help="default: the cpu profile's (128)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--option", action="append", default=[], metavar="MASKER.KEY=JSON",
                   help="masker option, e.g. msflow.epochs=10 (repeatable)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, dict[str, Any]] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        masker, _, opt = key.partition(".")
        if not opt or not value:
            p.error(f"--option {item!r}: expected MASKER.KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(masker, {})[opt] = parsed
    rows = measure(
        args.maskers, data=args.data, category=args.category, image_size=args.image_size, device=args.device,
        seed=args.seed, batch=args.batch, options=options, progress=args.progress,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"category {rows[0]['category']} at {rows[0]['image_size']} px, {rows[0]['n_train']} train / "
          f"{rows[0]['n_test']} test images, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
