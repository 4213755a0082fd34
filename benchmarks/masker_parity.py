"""ONNX parity of maskers on a data set's own images: fit each masker on the category's normal
training images, export it with its score module inside the graph
(:func:`fader_kit.deploy.masker_export.export_masker`), and compare onnxruntime's score map and mask
with the masker's own on every test image (:func:`~fader_kit.deploy.masker_export.masker_parity`).

    python -m fader_kit_bench.masker_parity --data mvtec:path/to/mpdd --category metal_plate \\
        --maskers ami_net msflow

One JSON line per masker: its fit time, the largest map difference (absolute and as a fraction of
the score range) and the share of mask pixels that differ, over all test images.  Generated data
checks the same in the tests; this command is for photographs, where the score range and the
backbone's activations are those a deployment sees.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from fader_kit.data import load_category
from fader_kit.deploy.masker_export import export_masker, masker_parity
from fader_kit.maskers.registry import create_masker


def measure(masker_name: str, train: torch.Tensor, test: torch.Tensor, image_size: int, folder: Path,
            batch_size: int = 16, seed: int = 0) -> dict[str, float | int | str]:
    """Fit, export and compare one masker; the worst map difference and the mean mask disagreement."""
    masker = create_masker(masker_name)
    t0 = time.perf_counter()
    masker.fit(train, seed=seed)
    fit_s = time.perf_counter() - t0
    path = export_masker(masker, folder / f"{masker_name}.onnx", image_size)
    parts = [masker_parity(masker, path, test[i:i + batch_size]) for i in range(0, test.shape[0], batch_size)]
    n = sum(p.images for p in parts)
    return {"masker": masker_name, "fit_s": round(fit_s, 1), "test_images": n,
            "max_abs_map_diff": max(p.max_abs_diff_map for p in parts),
            "max_map_diff_over_range": max(p.max_abs_diff_map / max(p.score_range, 1e-12) for p in parts),
            "mask_pixels_differing": sum(p.mask_pixels_differing * p.images for p in parts) / n,
            "mask_share": sum(p.mask_share * p.images for p in parts) / n}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.masker_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="synthetic | mvtec:PATH | visa:PATH")
    p.add_argument("--category", required=True)
    p.add_argument("--maskers", nargs="+", default=["patch_stats", "msflow", "ami_net"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = load_category(args.data, args.category, args.image_size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.maskers:
            row = measure(name, split.train, split.test, args.image_size, Path(tmp), seed=args.seed)
            print(json.dumps({"category": args.category, **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
