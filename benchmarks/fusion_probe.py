"""Fusion rules side by side: how the reconstruction's map and the masker's map are best combined.

For one (data, category, masker) and seeds, with the workbench's cached EAR U-Nets and masks (a bench
``--out`` folder), this scores plain EAR (and optionally head variants, trained again), the masker alone,
and the fused maps of each rule of :func:`fader_kit.fusion.fit_fusion` (``sum``, ``max``, ``select``),
every rule fitted on the normal *training* images only (``pseudo``: and on the same images with a
pseudo-anomaly pasted in, masked and scored by the fitted masker).  Each fused row is compared, paired over seeds
and test images, with the better of its two maps alone (the one with the higher mean image AUROC). Run::

    python -m fader_kit_bench.fusion_probe --data mvtec:path/to/mpdd --category metal_plate \\
        --masker msflow --seeds 0,1,2 --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fader_kit.config import get_profile
from fader_kit.engine.artifacts import WorkCache
from fader_kit.engine.sources import mask_source
from fader_kit.engine.workbench import CategoryWorkbench, WorkbenchSettings
from fader_kit.fader import FaderModel
from fader_kit.fusion import fit_fusion, fuse_maps
from fader_kit.pipeline import anomaly_maps, fader_stage, pseudo_anomaly_maps
from fader_kit.stats import ScoreDetail, paired_bootstrap
from fader_kit.variants import resolve

RULES = ("sum", "max", "select", "pseudo")


def seed_details(args: argparse.Namespace, seed: int, variant: str) -> dict[str, object]:
    profile = get_profile(args.profile)
    settings = WorkbenchSettings(data=args.data, category=args.category, profile=profile, seed=seed)
    bench = CategoryWorkbench(settings, WorkCache(Path(args.out)), log=lambda m: print(m, flush=True))
    source = mask_source(args.masker)
    split = bench.split()
    masks, _ = bench.masks(source)
    unet, _ = bench.unet(source)
    if variant == "ear":
        model = FaderModel(unet, None, profile.fader_head, head=None)
    else:
        model, _ = fader_stage(unet, split.train, masks.train, resolve(profile.fader_head, variant), profile.fader,
                               seed=seed, device=bench.device, scores=masks.train_scores,
                               masker=lambda: bench.fitted_masker(source), masker_name=source.name)
    bs = profile.eval_batch_size
    test = anomaly_maps(model, split.test, masks.test, batch_size=bs, device=bench.device, scores=masks.test_scores)
    normal = anomaly_maps(model, split.train, masks.train, batch_size=bs, device=bench.device,
                          scores=masks.train_scores)
    pseudo = pseudo_anomaly_maps(model, bench.fitted_masker(source), split.train, seed=seed, batch_size=bs,
                                 device=bench.device)
    out: dict[str, object] = {
        "model": ScoreDetail.from_maps(test, split.labels, split.masks),
        "masker": ScoreDetail.from_maps(masks.test_scores.float(), split.labels, split.masks),
    }
    for rule in RULES:
        scales = fit_fusion(normal, masks.train_scores.float(), rule=rule, pseudo=pseudo)
        out[rule] = ScoreDetail.from_maps(fuse_maps(test, masks.test_scores.float(), scales), split.labels, split.masks)
        out[f"{rule}_weight"] = scales.weight if scales.rule == "weighted" else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--masker", required=True)
    ap.add_argument("--variants", default="ear")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for variant in args.variants.split(","):
        per_seed = [seed_details(args, s, variant) for s in seeds]
        alone = {k: float(np.mean([d[k].image_auroc() for d in per_seed])) for k in ("model", "masker")}
        better = max(alone, key=alone.get)
        for rule in RULES:
            after = [d[rule] for d in per_seed]
            cmp_better = paired_bootstrap([d[better] for d in per_seed], after)
            cmp_model = paired_bootstrap([d["model"] for d in per_seed], after)
            ci = cmp_better["image_auroc"]
            rows.append({
                "category": args.category, "masker": args.masker, "variant": variant, "rule": rule,
                "seeds": len(seeds), "model_alone": alone["model"], "masker_alone": alone["masker"],
                "better": better, "image_auroc": ci.after_mean,
                "pixel_auroc": float(np.mean([a.pixel_auroc() for a in after])),
                "delta_better": ci.delta_mean, "ci_better": [ci.ci_low, ci.ci_high],
                "delta_model": cmp_model["image_auroc"].delta_mean,
                "ci_model": [cmp_model["image_auroc"].ci_low, cmp_model["image_auroc"].ci_high],
                "weights": [d[f"{rule}_weight"] for d in per_seed],
            })
            print(json.dumps(rows[-1]), flush=True)
    path = Path(args.out) / f"fusion_probe_{args.category}_{args.masker}.json"
    path.write_text(json.dumps(rows, indent=1))
    print("| masker | variant | rule | image / pixel AUROC | map alone: model / masker | Δ image vs better [95 % CI] "
          "| Δ image vs model [95 % CI] | weight w (per seed) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        w = "" if r["weights"][0] is None else ", ".join(f"{x:.2f}" for x in r["weights"])
        print(f"| {r['masker']} | {r['variant']} | {r['rule']} | {r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} | "
              f"{r['model_alone']:.3f} / {r['masker_alone']:.3f} | {r['delta_better']:+.3f} "
              f"[{r['ci_better'][0]:+.3f}, {r['ci_better'][1]:+.3f}] | {r['delta_model']:+.3f} "
              f"[{r['ci_model'][0]:+.3f}, {r['ci_model'][1]:+.3f}] | {w} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
