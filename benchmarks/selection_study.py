"""Does a detector's AUROC on pseudo-defects rank detectors as their test AUROC does?

For every category and seed the normal training images are split (:func:`fader_kit.selection.holdout_split`,
a fifth held out); every candidate masker (``create_masker(name)``: the maskers alone, no U-Net) is
fitted on the rest, then measured

- on the test set: image AUROC of the score map's maximum (``test_auroc``), pixel AUROC;
- on the held-out normal images against the same images with pseudo-defects
  (:mod:`fader_kit.pseudo_defects`), for every kind and every ``--sizes`` value (``pseudo``:
  ``{"kind@size": AUROC}``);
- its fit time (wall, CPU) and throughput (test images per second of ``score_map``).

One JSON line per (category, seed, masker) is appended to ``<out>/rows.jsonl`` as soon as it is
measured; a rerun skips the rows that exist.  The summary (``<out>/summary.md``, also printed)
scores every *option* (a kind at a size, or the mean over all kinds at a size): per category and
seed the Spearman rank correlation between the option's pseudo AUROC and the test AUROC over the
candidates, and the regret of choosing by it (best test AUROC minus the chosen one's), averaged
over the ``--dev`` categories and, separately, over the others (held out to confirm a default)::

    python -m fader_kit_bench.selection_study --data synthetic --category weave cells washer plate \\
        --seeds 0 1 2 --threads 1 --out results/selection
    python -m fader_kit_bench.selection_study --data mvtec:path/to/mpdd --category metal_plate \\
        --seeds 0 1 2 --threads 1 --out results/selection
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from fader_kit.data import load_category
from fader_kit.devices import resolve_device
from fader_kit.metrics import image_auroc, pixel_auroc
from fader_kit.pipeline import fit_masker, masker_score_maps
from fader_kit.pseudo_defects import DEFAULT_KINDS
from fader_kit.registry import create_masker
from fader_kit.selection import build_pseudo_sets, choose, holdout_split, pseudo_aurocs, regret

DEFAULT_MASKERS = ("patch_stats", "msflow", "ami_net")
DEFAULT_SIZES = (0.08, 0.15, 0.3)


def _key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return row["data"], row["category"], int(row["seed"]), row["masker"]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows measured so far (a torn last line from an interrupted run is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def measure(masker_name: str, split: Any, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Fit one masker on the fit part of the normal images and measure it (see the module doc)."""
    device = resolve_device(args.device)
    fit_idx, held_idx = holdout_split(split.train.shape[0], args.holdout, seed)
    masker = create_masker(masker_name, device=str(device))
    t0, c0 = time.perf_counter(), time.process_time()
    fit_masker(masker, split.train[fit_idx], seed=seed, device=device)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = masker_score_maps(masker, images, batch_size=args.batch, device=device)
        return maps.flatten(1).amax(1), maps

    t0 = time.perf_counter()
    scores, maps = score(split.test)
    ips = split.test.shape[0] / (time.perf_counter() - t0)
    held = split.train[held_idx]
    pseudo, pseudo_pixel = {}, {}
    for size in args.sizes:
        image, pixel = pseudo_aurocs(score, held, build_pseudo_sets(held, seed, args.kinds, size, args.copies))
        pseudo.update({f"{k}@{size:g}": v for k, v in image.items()})
        pseudo_pixel.update({f"{k}@{size:g}": v for k, v in pixel.items()})
    return {
        "data": args.data, "category": split.category, "seed": seed, "masker": masker_name,
        "image_size": args.image_size, "n_fit": len(fit_idx), "n_held_out": len(held_idx),
        "n_test": split.test.shape[0], "copies": args.copies, "test_auroc": image_auroc(scores, split.labels),
        "test_pixel_auroc": pixel_auroc(maps, split.masks), "pseudo": pseudo, "pseudo_pixel": pseudo_pixel,
        "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "images_per_s": ips, "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0], "device": str(device),
    }


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    done = {_key(r) for r in read_rows(path)}
    for category in args.category:
        for seed in args.seeds:
            todo = [m for m in args.maskers if (args.data, category, seed, m) not in done]
            if not todo:
                continue
            split = load_category(args.data, category, args.image_size, seed=seed)
            for m in todo:
                row = measure(m, split, seed, args)
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{category} seed {seed} {m}: test {row['test_auroc']:.3f} fit {row['fit_s']:.0f} s",
                      file=sys.stderr, flush=True)


def options(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Each option's name -> the pseudo keys it averages: every kind@size, and all kinds at a size."""
    keys = sorted({k for r in rows for k in r["pseudo"]})
    sizes = sorted({k.split("@")[1] for k in keys}, key=float)
    opts = {k: [k] for k in keys}
    opts.update({f"all@{s}": [k for k in keys if k.endswith(f"@{s}")] for s in sizes})
    return opts


def evaluate_option(groups: dict[tuple[str, int], list[dict[str, Any]]], keys: list[str]) -> dict[tuple[str, int], tuple[float, float]]:
    """Per (category, seed): (Spearman of the option's pseudo AUROC vs test AUROC, regret of its choice)."""
    out = {}
    for g, rs in groups.items():
        pseudo = {r["masker"]: float(np.mean([r["pseudo"][k] for k in keys])) for r in rs}
        test = {r["masker"]: r["test_auroc"] for r in rs}
        with warnings.catch_warnings():  # equal pseudo AUROCs: no rank correlation (NaN, left out)
            warnings.simplefilter("ignore")
            rho = spearmanr([pseudo[m] for m in test], list(test.values())).statistic
        out[g] = (float(rho), regret(test, choose(pseudo)[0]))
    return out


def summary(rows: Sequence[dict[str, Any]], dev: Sequence[str]) -> str:
    """Markdown: per option, mean Spearman and mean / max regret on the dev and held-out categories."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["category"], int(r["seed"])), []).append(r)
    groups = {g: rs for g, rs in groups.items() if len(rs) > 1}
    lines = ["| option | dev Spearman | dev regret mean / max | held-out Spearman | held-out regret mean / max |",
             "|---|---|---|---|---|"]
    for name, keys in options(rows).items():
        res = evaluate_option(groups, keys)
        cells = []
        for part in (True, False):
            vals = [v for g, v in res.items() if (g[0] in dev) == part]
            rho = [v[0] for v in vals if np.isfinite(v[0])]
            reg = [v[1] for v in vals]
            cells += [f"{np.mean(rho):.2f} (n={len(rho)})" if rho else "–",
                      f"{np.mean(reg):.3f} / {np.max(reg):.3f}" if reg else "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_candidate(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """Markdown: mean over seeds of test AUROC, pseudo AUROC per key, fit s, images/s per category and masker."""
    head = ["category", "masker", "seeds", "test AUROC", *keys, "fit s", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["category"], r["masker"]), []).append(r)
    for (cat, m), rs in cells.items():
        vals = [np.mean([r["test_auroc"] for r in rs]), *(np.mean([r["pseudo"][k] for r in rs]) for k in keys)]
        lines.append(f"| {cat} | {m} | {len(rs)} | " + " | ".join(f"{v:.3f}" for v in vals)
                     + f" | {np.mean([r['fit_s'] for r in rs]):.0f} | {np.mean([r['images_per_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.selection_study", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic", help="synthetic, or mvtec:PATH (an MVTec-layout folder)")
    p.add_argument("--category", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS))
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS))
    p.add_argument("--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES),
                   help="defect sizes as fractions of the image side")
    p.add_argument("--copies", type=int, default=3, help="defective copies of each held-out image (default 3)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the normal images held out (default 0.2)")
    p.add_argument("--image-size", type=int, default=128, help="default 128 (the cpu profile's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: shared machines)")
    p.add_argument("--dev", nargs="*", default=None,
                   help="categories the summary counts as development (default: all but the last one seen)")
    p.add_argument("--summary-only", action="store_true", help="only summarise the rows in --out")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if not args.summary_only:
        run(args)
    rows = read_rows(Path(args.out) / "rows.jsonl")
    cats = list(dict.fromkeys(r["category"] for r in rows))
    dev = args.dev if args.dev is not None else cats[:-1]
    text = (f"development categories: {', '.join(dev)}; held out: {', '.join(c for c in cats if c not in dev)}\n\n"
            + summary(rows, dev) + "\n\n" + per_candidate(rows, sorted({k for r in rows for k in r["pseudo"]})))
    (Path(args.out) / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
