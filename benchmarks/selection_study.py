"""Does the selector pick the detector the test set would?  Every masker x score kind is a candidate.

For every category and seed the normal training images are split (:func:`fader_kit.deploy.selection.holdout_split`,
a fifth held out).  Per masker (``--maskers``) the masker is fitted on the rest and the parts of
every score kind (:mod:`fader_kit.deploy.score_kinds`: ``masker``, ``ear``, ``fader``, ``fused``) are
trained once (:func:`fader_kit.deploy.fit_parts.train_parts`; with ``--ear-masks blobs`` the EAR U-Net does
not depend on the masker, so one is trained per category and seed and shared).  Each of the
maskers x kinds candidates is then measured

- on the held-out normal images against the same images with pseudo-defects
  (:mod:`fader_kit.data.pseudo_defects`, ``--size``, ``--copies`` per image) of every kind that no
  candidate trained on (:func:`fader_kit.deploy.fit_parts.trained_on`): ``pseudo`` per kind, and their
  mean, the ``selection_score`` (:func:`fader_kit.engine.selection_run.score_candidates`, as
  ``fader-kit evaluate --select`` measures it);
- on the test set: image AUROC of the map's maximum, pixel AUROC, images per second;
- its fit time: the masker's fit plus what the kind trains on top (EAR U-Net, head, fusion).

One JSON line per candidate is appended to ``<out>/rows.jsonl`` as soon as its masker's four are
measured; a rerun skips the maskers whose rows exist.  The summary
(:mod:`fader_kit_bench.selection_summary`, ``<out>/summary.md``) says per category and seed which
candidate the selector chose and which was best::

    python -m fader_kit_bench.selection_study --data synthetic --category weave cells washer plate \\
        --seeds 0 1 2 --threads 1 --out results/selection
    python -m fader_kit_bench.selection_study --data mvtec:path/to/mpdd --category metal_plate \\
        --seeds 0 1 2 --threads 1 --out results/selection
    python -m fader_kit_bench.selection_study --summary-only --out results/selection
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

from fader_kit.model.config import get_profile
from fader_kit.data import load_category
from fader_kit.util.devices import resolve_device
from fader_kit.engine.selection_run import measure_masker
from fader_kit.engine.pace import cpu_model
from fader_kit.data.pseudo_defects import DEFAULT_KINDS, DEFAULT_SIZE
from fader_kit.maskers.registry import default_registry
from fader_kit.deploy.score_kinds import SCORE_NAMES
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT, resolve

DEFAULT_MASKERS = ("patch_stats", "msflow", "ami_net")


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


def measure(masker_name: str, split: Any, seed: int, args: argparse.Namespace, ear_cache: Path) -> list[dict[str, Any]]:
    """Fit one masker and every kind's parts on the fit part of the normal images; one row per kind."""
    device = resolve_device(args.device)
    profile = get_profile(args.profile)
    m = measure_masker(split, masker_name, profile, resolve(profile.fader_head, args.head), registry=default_registry(),
                       seed=seed, device=device, ear_masks=args.ear_masks, holdout=args.holdout, kinds=args.kinds,
                       size=args.size, copies=args.copies, batch_size=args.batch, ear_cache=ear_cache,
                       log=lambda _: None)
    return [{
        "data": args.data, "category": split.category, "seed": seed, "masker": masker_name, "kind": c.name,
        "candidate": f"{masker_name}:{c.name}", "trained_on": list(c.trained_on), "head": args.head,
        "ear_masks": args.ear_masks, "profile": args.profile, "size": args.size, "copies": args.copies,
        "n_fit": m.n_fit, "n_held_out": m.n_held, "n_test": split.test.shape[0], "pseudo": c.pseudo,
        "pseudo_pixel": c.pseudo_pixel, "selection_score": c.selection_score, "test_auroc": c.test_image_auroc,
        "test_pixel_auroc": c.test_pixel_auroc, "fit_s": m.fit_s[c.name],
        "images_per_s": c.images_per_s, "same_as": c.same_as and f"{masker_name}:{c.same_as}",
        "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
        "device": str(device), "cpu": cpu_model(),
    } for c in m.measures]


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    (out / "ear").mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    done = {(r["data"], r["category"], int(r["seed"]), r["masker"]) for r in read_rows(path)}
    for seed in args.seeds:  # every category's seed 0 first: a stopped run leaves balanced results
        for category in args.category:
            todo = [m for m in args.maskers if (args.data, category, seed, m) not in done]
            if not todo:
                continue
            split = load_category(args.data, category, get_profile(args.profile).image_size, seed=seed)
            for m in todo:
                t0 = time.perf_counter()
                rows = measure(m, split, seed, args, out / "ear" / f"{category}-seed{seed}.pt")
                with path.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
                tests = ", ".join(f"{r['kind']} {r['test_auroc']:.3f}" for r in rows)
                print(f"{category} seed {seed} {m} ({time.perf_counter() - t0:.0f} s): test {tests}",
                      file=sys.stderr, flush=True)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.selection_study", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic", help="synthetic, or mvtec:PATH (an MVTec-layout folder)")
    p.add_argument("--category", nargs="+", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS))
    p.add_argument("--profile", default="cpu", help="training profile (default cpu: 128 px)")
    p.add_argument("--head", default=DEFAULT_HEAD_VARIANT, help=f"FADeR head variant (default {DEFAULT_HEAD_VARIANT})")
    p.add_argument("--ear-masks", default="blobs", choices=("blobs", "masker"))
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS))
    p.add_argument("--size", type=float, default=DEFAULT_SIZE, help="defect size, a fraction of the image side")
    p.add_argument("--copies", type=int, default=3, help="defective copies of each held-out image (default 3)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the normal images held out (default 0.2)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: shared machines)")
    p.add_argument("--summary-only", action="store_true", help="only summarise the rows in --out")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from .selection_summary import summary

    args = parse(argv)
    torch.set_num_threads(args.threads)
    if not args.summary_only:
        if not args.category:
            raise SystemExit("argument --category: give at least one category (or --summary-only)")
        run(args)
    text = summary(read_rows(Path(args.out) / "rows.jsonl"), [f"{m}:{k}" for m in args.maskers for k in SCORE_NAMES])
    (Path(args.out) / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
