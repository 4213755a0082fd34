"""Fingerprints of a tiny training per head variant, to diff before and after a change on ONE machine.

    python -m fader_kit_bench.fingerprints record before.json        # on the code before the change
    python -m fader_kit_bench.fingerprints compare before.json       # on the code after it, same machine

A refactor that must not move numbers (a registry, a faster kernel with the same arithmetic) is
checked here and not by a unit test: the last bits of a training depend on the CPU's kernels
(oneDNN picks other ones on an AVX2-only CPU) and on the thread count, so bits recorded on one
machine are no test on another. ``compare`` exits 1 and names each variant whose numbers differ;
``--rtol`` allows a stated tolerance (default 0: identical).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

#: The variants the tables and the detector use: the paper's head, the default head, the control,
#: and one with a neighbourhood context (a different code path through the head).
DEFAULT_VARIANTS = ("paper", "pseudo_focused", "open_gates", "neighbours")


def tiny_training(name: str, seed: int = 0) -> list[float]:
    """Sums of the head's l_hat, its gates, the reconstruction, then the 3 test images' scores,
    after one epoch of FADeR training on 6 random 64 px images (smoke U-Net, one thread's order)."""
    from fader_kit.model.config import get_profile
    from fader_kit.model.fader import wrap_with_fader
    from fader_kit.model.scoring import image_score
    from fader_kit.model.training import seeded_init, train_fader
    from fader_kit.model.unet import EARUNet
    from fader_kit.model.variants import resolve

    prof = get_profile("smoke")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 64, 64, generator=g)
    mb = torch.zeros(6, 1, 64, 64, dtype=torch.bool)
    mb[:, :, 8:24, 16:40] = True
    test = torch.rand(3, 3, 64, 64, generator=g)
    tmb = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    tmb[:, :, 32:48, 8:24] = True
    unet = seeded_init(lambda: EARUNet(prof.unet), seed)
    model = seeded_init(lambda: wrap_with_fader(unet, None, resolve(prof.fader_head, name)), seed + 1)
    # a head that reads the masker's score map gets one of its own generator (the images stay those above)
    sg = torch.Generator().manual_seed(seed + 2)
    scores, test_scores = torch.rand(6, 1, 64, 64, generator=sg), torch.rand(3, 1, 64, 64, generator=sg)
    if not model.needs_scores:
        scores = test_scores = None
    train_fader(model, x, mb, prof.fader.model_copy(update={"epochs": 1, "batch_size": 3}), seed=seed,
                scores=scores, score_threshold=0.9)
    with torch.no_grad():
        pred, gates = model.head_outputs(test, tmb, test_scores)
        rec = model(test, tmb, scores=test_scores).reconstruction
    score = image_score(model.anomaly_map(test, tmb, scores=test_scores))
    return [float(pred.double().sum()), float(gates.double().sum()), float(rec.double().sum()),
            *(float(s) for s in score)]


def fingerprints(variants: Sequence[str], threads: int = 1) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    return {name: tiny_training(name) for name in variants}


def differences(before: dict[str, list[float]], after: dict[str, list[float]], rtol: float = 0.0) -> list[str]:
    """One line per variant whose numbers moved by more than ``rtol`` (relative), or that is missing."""
    lines = []
    for name, old in sorted(before.items()):
        new = after.get(name)
        if new is None or len(new) != len(old):
            lines.append(f"{name}: missing or of another length after the change")
            continue
        worst = max((abs(a - b) / max(abs(a), 1e-12) for a, b in zip(old, new)), default=0.0)
        if not all(math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) for a, b in zip(old, new)):
            lines.append(f"{name}: largest relative difference {worst:.3g}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.fingerprints", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["record", "compare"])
    p.add_argument("file", type=Path, help="the JSON file to write (record) or to compare with (compare)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--all", action="store_true",
                   help="every registered variant (experiments too, when their plugin is installed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (record and compare with the same)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for compare (default 0: identical)")
    args = p.parse_args(argv)
    if args.all:
        from fader_kit.model.variants import variant_names

        args.variants = variant_names(aliases=False)
    got = fingerprints(args.variants, args.threads)
    if args.action == "record":
        args.file.write_text(json.dumps({"threads": args.threads, "fingerprints": got}, indent=1))
        print(f"recorded {len(got)} variants in {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    if recorded.get("threads") != args.threads:
        print(f"note: recorded with {recorded.get('threads')} threads, compared with {args.threads}")
    moved = differences({k: v for k, v in recorded["fingerprints"].items() if k in got}, got, args.rtol)
    for line in moved:
        print(line)
    print("identical" if not moved and args.rtol == 0 else f"{len(moved)} of {len(got)} variants differ")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
