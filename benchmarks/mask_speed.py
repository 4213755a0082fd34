"""Mask time per image of the pretrained-model maskers, at full size from random init.

Each masker is built exactly as ``fader-kit`` builds it (``create_masker(name,
allow_random_weights=True)``; with weights present they are used instead -- the cost is the same)
and times ``mask()`` on random images already at the masker's input size (224 for the ViTs,
240 for WinCLIP), so resizing is not what is measured.  One warm-up call, then the median of
``repeats`` calls per batch size::

    python -m benchmarks.mask_speed --maskers dino_vit plain_vit winclip --batch 1 8 --threads 1

The cost of WinCLIP is dominated by its windows: 196 windows of 2x2 and 169 of 3x3 patches,
each a separate (short) transformer pass -- about twelve times the tokens of the image itself.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.timing import time_call

DEFAULT_MASKERS = ("dino_vit", "plain_vit", "winclip")


def measure_mask_speed(
    names: Sequence[str] = DEFAULT_MASKERS,
    batches: Sequence[int] = (1, 8),
    *,
    device: str = "cpu",
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (masker, batch size): seconds per ``mask()`` call and milliseconds per image."""
    from fader_kit.registry import create_masker

    dev = torch.device(device)
    rows = []
    for name in names:
        masker = create_masker(name, allow_random_weights=True, device=str(dev))
        info = masker.info
        size = info.input_size or 224
        gen = torch.Generator().manual_seed(seed)
        for batch in batches:
            images = torch.rand(batch, 3, size, size, generator=gen).to(dev)
            with torch.no_grad():
                for _ in range(warmup):
                    masker.mask(images)
                times = [time_call(lambda: masker.mask(images), dev) for _ in range(repeats)]
            seconds = statistics.median(times)
            rows.append({
                "masker": name, "weights": info.weights, "input_size": size, "batch": batch,
                "device": str(dev), "threads": torch.get_num_threads(), "repeats": repeats,
                "seconds_per_call": seconds, "ms_per_image": 1000 * seconds / batch,
            })
            print(f"{name:<10} {info.weights:<12} {size:>4}px  batch {batch:>2}  "
                  f"{seconds:8.3f} s/call  {1000 * seconds / batch:9.1f} ms/image", flush=True)
        del masker
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maskers", nargs="+", default=list(DEFAULT_MASKERS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init is the point: never wait for a hub
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure_mask_speed(args.maskers, args.batch, device=args.device, repeats=args.repeats, warmup=args.warmup)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
