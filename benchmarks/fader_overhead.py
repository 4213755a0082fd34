"""How much time FADeR adds to the EAR U-Net's inference (issue target: under 5 %).

Both paths get the same obfuscated-input work (binary mask given); FADeR adds patch tokens,
the two-layer MLP, the soft mask, Theta and the gate products.  Run::

    python -m fader_kit_bench.fader_overhead --size 256 --batch 8 --device cpu
"""
from __future__ import annotations

import argparse
import json

import torch

from fader_kit.model.config import FaderConfig, UNetConfig
from fader_kit.util.devices import resolve_device
from fader_kit.model.fader import wrap_with_fader
from fader_kit.model.obfuscation import obfuscate
from fader_kit.model.training import seeded_init
from fader_kit.model.unet import EARUNet

from .timing import interleaved_medians


def measure_overhead(
    *, size: int = 256, batch: int = 8, device: str = "cpu", unet: UNetConfig | None = None,
    head: FaderConfig | None = None, repeats: int = 10, seed: int = 0,
) -> dict[str, float]:
    dev = resolve_device(device)
    fader = seeded_init(lambda: wrap_with_fader(EARUNet(unet or UNetConfig()), None, head or FaderConfig()), seed)
    fader = fader.to(dev).eval()
    ear = fader.without_head()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen).to(dev)
    mask = (torch.rand(batch, 1, size, size, generator=gen) > 0.9).to(dev)
    # a head that reads the masker's score map gets one (the masker's own cost is not FADeR's)
    scores = torch.rand(batch, 1, size, size, generator=gen).to(dev) if fader.needs_scores else None
    if fader.calibration is not None:
        fader.calibration.copy_(torch.tensor([0.5, 1.0]))  # any finite scale: the cost does not depend on it
    with torch.no_grad():
        obf = obfuscate(x, mask, fader.patch_size)
        feats = fader.reconstructor.encode(obf)
        grid = (size // fader.patch_size, size // fader.patch_size)

        def head_only() -> torch.Tensor:  # what FADeR adds: l_hat and the gate grid (not the gate products)
            return fader.gate_grid(fader.predict_errors(obf, feats, scores), grid, mask)

        med = interleaved_medians(
            {"ear": lambda: ear(x, mask).reconstruction,
             "fader": lambda: fader(x, mask, scores=scores).reconstruction, "head": head_only}, dev, repeats=repeats
        )
    return {
        "size": size, "batch": batch, "device": str(dev), "ear_seconds": med["ear"], "fader_seconds": med["fader"],
        "overhead_ratio": med["fader"] / med["ear"] - 1.0,
        "head_seconds": med["head"], "head_ratio": med["head"] / med["ear"],
        "head_parameters": sum(p.numel() for p in fader.head.parameters()),
        "unet_parameters": sum(p.numel() for p in fader.reconstructor.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile", default=None, help="U-Net widths and head of this profile (default: the paper's)")
    p.add_argument("--variant", default="paper", help="head variant (fader_kit.model.variants)")
    args = p.parse_args(argv)
    from fader_kit.model.config import get_profile
    from fader_kit.model.variants import resolve

    prof = get_profile(args.profile) if args.profile else None
    head = resolve(prof.fader_head if prof else FaderConfig(), args.variant)
    r = measure_overhead(size=args.size, batch=args.batch, device=args.device, repeats=args.repeats,
                         unet=prof.unet if prof else None, head=head)
    r["variant"] = args.variant
    print(json.dumps(r, indent=2))
    print(f"{args.variant}: head alone {100 * r['head_ratio']:.2f} % of EAR's forward; "
          f"FADeR adds {100 * r['overhead_ratio']:.2f} % to EAR inference "
          f"({r['ear_seconds'] * 1000:.1f} ms -> {r['fader_seconds'] * 1000:.1f} ms per batch of {r['batch']} at {r['size']}px, {r['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
