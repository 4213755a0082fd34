"""What each FADeR head *can* learn, before any detector AUROC.

For each head variant, trained on one (data, category, masker, seed) exactly as the benchmarks train
it (the same workbench, cache and EAR U-Net), this reports:

- ``rho_own``: Spearman rank correlation between l_hat and the variant's own training target
  (``target``: gated / ungated reconstruction of the trained model, or plain EAR's error) on the
  *held-out* normal patches: the unmasked patches of the normal test images;
- ``rho_ear``: the same against the error plain EAR makes (eval mode): the error the gates exist to
  prevent;
- ``auroc_missed``: the AUROC of l_hat for the defect patches the mask missed against normal patches
  (:mod:`fader_kit.diagnostics`), and the mean gates there;
- the detector's image / pixel AUROC of that one run (one seed: direction only).

A reference row ``EAR error (oracle)`` scores the true EAR patch error itself. Run::

    python -m fader_kit_bench.head_probe --data mvtec:path/to/mpdd --category metal_plate \\
        --masker patch_stats --variants paper,stats_ear,score_gates --seed 0 --out DIR
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from fader_kit.config import get_profile
from fader_kit.diagnostics import head_diagnostics
from fader_kit.engine.artifacts import WorkCache
from fader_kit.engine.sources import mask_source
from fader_kit.engine.workbench import CategoryWorkbench, WorkbenchSettings
from fader_kit.fader import FaderModel, patch_errors, unmasked_patches
from fader_kit.obfuscation import obfuscate
from fader_kit.util.batching import device_batches
from fader_kit.variants import canonical_name, resolve


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


def probe_variant(bench: CategoryWorkbench, source, name: str) -> dict[str, object]:
    s = bench.settings
    cfg = resolve(s.profile.fader_head, name)
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
    d = ev.diagnostics.head
    return {
        "variant": name, "target": own if cfg.experiment.gates != "score" else "none (masker score)",
        "rho_own": spearman(pred, targets[own]), "rho_ear": spearman(pred, targets["ear"]),
        "auroc_missed": d.auroc_unmasked_defect, "gate_missed": d.gate_unmasked_defect,
        "gate_normal_defective": d.gate_normal_defective, "gate_normal_images": d.gate_normal_images,
        "image_auroc": ev.metrics.image_auroc, "pixel_auroc": ev.metrics.pixel_auroc,
        "train_seconds": ev.timings.get("fader_train"), "cpu_seconds": cpu,
    }


def oracle_row(bench: CategoryWorkbench, source) -> dict[str, object]:
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
    return {"variant": "EAR error (oracle)", "target": "ear", "rho_own": 1.0, "rho_ear": 1.0,
            "auroc_missed": d.auroc_unmasked_defect, "unmasked_defect_patches": d.unmasked_defect_patches}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--masker", default="patch_stats")
    ap.add_argument("--variants", default="paper,ear_target,stats,stats_ear,encoder_ear,stats_score_ear,score_gates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="cache folder (a bench --out folder reuses its masks and U-Nets)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = WorkbenchSettings(data=args.data, category=args.category, profile=get_profile(args.profile),
                                 seed=args.seed)
    bench = CategoryWorkbench(settings, WorkCache(Path(args.out)), log=lambda m: print(m, flush=True))
    source = mask_source(args.masker)
    rows = [oracle_row(bench, source)]
    print(json.dumps(rows[-1]), flush=True)
    for name in args.variants.split(","):
        rows.append(probe_variant(bench, source, canonical_name(name.strip())))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out) / f"head_probe_{args.category}_{args.masker}_s{args.seed}.json"
    out.write_text(json.dumps(rows, indent=1))
    print("| variant | target | rho own (held-out normal) | rho vs EAR error | l_hat AUROC missed | gates missed / "
          "normal px defective / normal images | image / pixel AUROC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def f(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in rows:
        gates = " / ".join(f(r.get(k)) for k in ("gate_missed", "gate_normal_defective", "gate_normal_images"))
        print(f"| {r['variant']} | {r['target']} | {f(r['rho_own'])} | {f(r['rho_ear'])} | {f(r['auroc_missed'])} | "
              f"{gates} | {f(r.get('image_auroc'))} / {f(r.get('pixel_auroc'))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
