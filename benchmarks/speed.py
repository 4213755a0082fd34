"""``fader-kit bench speed``: how fast each masker, the EAR U-Net and FADeR_EAR run.

Per model and device: per-image latency at batch 1 and batch 8 (256x256 by default), throughput
at the largest batch, parameter count and FLOPs per image (``torch.utils.flop_counter``).  EAR and
FADeR are timed interleaved in the same run by :func:`fader_kit_bench.fader_overhead.measure_overhead`,
so FADeR's overhead is a ratio of two numbers measured under the same load.  The EAR U-Net is the
paper's (the ``paper`` profile's widths and head), whatever profile the tables use.

On a CPU device the same two models are also exported to ONNX (:mod:`fader_kit.model.onnx_export`, needs the
``[export]`` extra) and timed with onnxruntime beside torch running the very same computation --
reconstruction, MSGMS anomaly map and image score, the exported graph -- all four interleaved,
with onnxruntime given as many threads as torch; FADeR's overhead is reported under both.

EAR training throughput (images/s of the real training step) and the achieved GFLOP/s of training
and inference, as a fraction of this machine's float32 matmul rate measured in the same run, come
from :mod:`fader_kit_bench.efficiency` (the ``cpu`` profile's U-Net by default).

Maskers are built like everywhere else (registry, ``--weights`` / ``--allow-random-weights``);
one that cannot be built is reported with its reason, and the rest are measured.  Trained maskers
are fitted first on a few generated images, with ``epochs=1`` where the masker's registration says
its factory takes ``epochs`` (``MaskerRegistry.accepts``): fitting quality does not change how long
a forward pass takes.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.flop_counter import FlopCounterMode

from fader_kit.model.config import get_profile
from fader_kit.util.devices import resolve_device
from fader_kit.model.fader import FaderModel, wrap_with_fader
from fader_kit.maskers.interfaces import Masker
from fader_kit.maskers.registry import MaskerRegistry, default_registry
from fader_kit.model.training import seeded_init
from fader_kit.model.unet import EARUNet

from .efficiency import Efficiency, measure_efficiency
from .fader_overhead import measure_overhead
from .timing import interleaved_medians

Log = Callable[[str], None]


class SpeedConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path
    maskers: tuple[str, ...] | None = Field(None, description="None = every registered masker")
    devices: tuple[str, ...] = Field(("cpu",), description="devices to measure on")
    size: int = Field(256, ge=32)
    batches: tuple[int, ...] = (1, 8)
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)
    model_profile: str = Field("paper", description="profile whose U-Net and head are measured")
    masker_options: dict[str, Any] = Field(default_factory=dict)
    fit_images: int = Field(8, ge=2)
    seed: int = 0
    onnx: bool = Field(True, description="on CPU, also time the exported ONNX graph with onnxruntime beside torch")
    efficiency_profile: str | None = Field(
        "cpu", description="profile whose EAR training and inference throughput is measured against this machine's "
        "float32 matmul rate (None = skip)")


class SpeedRecord(BaseModel):
    device: str
    model: str
    kind: str  # masker | ear | fader
    status: str = "ok"
    reason: str | None = None
    weights: str | None = None
    parameters: int | None = None
    gflops_per_image: float | None = None
    latency_ms: dict[str, float] = Field(default_factory=dict, description="batch size -> ms per image")
    throughput: float | None = Field(None, description="images per second at the largest batch")


def count_parameters(obj: object) -> int:
    """Parameters of a module, or of every module held by a masker (each counted once)."""
    if isinstance(obj, torch.nn.Module):
        return sum(p.numel() for p in obj.parameters())
    seen: set[int] = set()
    total = 0
    for value in vars(obj).values():
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


@torch.no_grad()
def flops_per_image(fn: Callable[[torch.Tensor], object], x1: torch.Tensor) -> float:
    """FLOPs of one call on a batch of one image, as torch's flop counter sees them (matmuls and
    convolutions; element-wise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(x1)
    return float(counter.get_total_flops())


def sample_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images in [0, 1] (speed does not depend on content; a flat image might)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 16, 16, generator=g)
    return (F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _build_masker(registry: MaskerRegistry, name: str, options: dict[str, Any], device: torch.device) -> Masker:
    opts = {**options, "device": str(device)}
    if registry.accepts(name, "epochs"):  # a trained masker: one epoch is enough to time it
        opts.setdefault("epochs", 1)
    return registry.create(name, **opts)


def measure_masker(name: str, cfg: SpeedConfig, device: torch.device, registry: MaskerRegistry) -> SpeedRecord:
    rec = SpeedRecord(device=str(device), model=name, kind="masker")
    try:
        masker = _build_masker(registry, name, dict(cfg.masker_options), device)
        rec.weights = masker.info.weights
        masker.to(device)
        masker.fit(sample_images(cfg.fit_images, cfg.size, cfg.seed).to(device), seed=cfg.seed)
        rec.parameters = count_parameters(masker)
        x1 = sample_images(1, cfg.size, cfg.seed + 1).to(device)
        rec.gflops_per_image = flops_per_image(masker.mask, x1) / 1e9
        for b in cfg.batches:
            x = sample_images(b, cfg.size, cfg.seed + 2).to(device)
            t = interleaved_medians({name: lambda: masker.mask(x)}, device, warmup=cfg.warmup, repeats=cfg.repeats)[name]
            rec.latency_ms[str(b)] = 1000 * t / b
            rec.throughput = b / t
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        rec.status, rec.reason = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return rec


def measure_models(cfg: SpeedConfig, device: torch.device) -> tuple[list[SpeedRecord], dict[str, float]]:
    """EAR U-Net and FADeR_EAR, interleaved (measure_overhead), plus FLOPs and parameters."""
    prof = get_profile(cfg.model_profile)
    fader = seeded_init(lambda: wrap_with_fader(EARUNet(prof.unet), None, prof.fader_head), cfg.seed).to(device).eval()
    ear = fader.without_head()
    x1 = sample_images(1, cfg.size, cfg.seed).to(device)
    m1 = torch.zeros(1, 1, cfg.size, cfg.size, dtype=torch.bool, device=device)
    recs = {
        "ear": SpeedRecord(device=str(device), model=f"EAR U-Net ({prof.name} widths {','.join(map(str, prof.unet.widths))})",
                           kind="ear", weights="n/a (timing only)", parameters=count_parameters(ear),
                           gflops_per_image=flops_per_image(lambda x: ear(x, m1).reconstruction, x1) / 1e9),
        "fader": SpeedRecord(device=str(device), model=f"FADeR_EAR (head {prof.fader_head.head}, hidden {prof.fader_head.hidden})",
                             kind="fader", weights="n/a (timing only)", parameters=count_parameters(fader),
                             gflops_per_image=flops_per_image(lambda x: fader(x, m1).reconstruction, x1) / 1e9),
    }
    overhead: dict[str, float] = {}
    for b in cfg.batches:
        r = measure_overhead(size=cfg.size, batch=b, device=str(device), unet=prof.unet, head=prof.fader_head,
                             repeats=cfg.repeats, seed=cfg.seed)
        recs["ear"].latency_ms[str(b)] = 1000 * r["ear_seconds"] / b
        recs["fader"].latency_ms[str(b)] = 1000 * r["fader_seconds"] / b
        recs["ear"].throughput = b / r["ear_seconds"]
        recs["fader"].throughput = b / r["fader_seconds"]
        overhead[str(b)] = r["overhead_ratio"]
    return list(recs.values()), overhead


def measure_onnx(cfg: SpeedConfig, fader: FaderModel) -> tuple[list[SpeedRecord], dict[str, dict[str, float]]]:
    """The exported graph (reconstruction + MSGMS map + score) of EAR and FADeR_EAR, in torch and in
    onnxruntime (CPU, as many threads as torch), all four interleaved per batch size."""
    from fader_kit.model.onnx_export import ExportError, ScoringGraph, export_model, onnx_session, run_onnx

    models = {"ear": fader.without_head(), "fader": fader}
    names = {"ear": "EAR U-Net + MSGMS map", "fader": "FADeR_EAR + MSGMS map"}
    recs = {f"{k}/{rt}": SpeedRecord(device="cpu", model=f"{names[k]} [{rt}]", kind=f"{k}-graph", weights="n/a (timing only)",
                                     parameters=count_parameters(models[k]))
            for k in models for rt in ("torch", "onnxruntime")}
    overhead: dict[str, dict[str, float]] = {"torch": {}, "onnxruntime": {}}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sessions = {k: onnx_session(export_model(m, Path(tmp) / f"{k}.onnx", cfg.size, check=False).path,
                                        threads=torch.get_num_threads()) for k, m in models.items()}
        except ExportError as exc:  # the [export] extra is missing: torch numbers stand alone
            for key, rec in recs.items():
                if key.endswith("onnxruntime"):
                    rec.status, rec.reason = "failed", str(exc)
            return list(recs.values()), {}
        graphs = {k: ScoringGraph(m, cfg.size).eval() for k, m in models.items()}
        for b in cfg.batches:
            x = sample_images(b, cfg.size, cfg.seed + 3)
            mask = torch.rand(b, 1, cfg.size, cfg.size, generator=torch.Generator().manual_seed(cfg.seed)) > 0.9
            fns: dict[str, Callable[[], object]] = {}
            for k in models:
                fns[f"{k}/torch"] = (lambda g: lambda: g(x, mask))(graphs[k])
                fns[f"{k}/onnxruntime"] = (lambda s: lambda: run_onnx(s, x, mask))(sessions[k])
            t = interleaved_medians(fns, torch.device("cpu"), warmup=cfg.warmup, repeats=cfg.repeats)
            for key, seconds in t.items():
                recs[key].latency_ms[str(b)] = 1000 * seconds / b
                recs[key].throughput = b / seconds
            for rt in overhead:
                overhead[rt][str(b)] = t[f"fader/{rt}"] / t[f"ear/{rt}"] - 1.0
    return list(recs.values()), overhead


def run_speed(cfg: SpeedConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> dict[str, Any]:
    registry = registry or default_registry()
    names = list(cfg.maskers) if cfg.maskers is not None else [e.name for e in registry.list()]
    result: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "threads": torch.get_num_threads(),
                              "torch": torch.__version__, "records": [], "fader_overhead": {}}
    t0 = time.perf_counter()
    for dev_name in cfg.devices:
        device = resolve_device(dev_name)
        log(f"speed on {device} ({cfg.size}x{cfg.size}, batches {', '.join(map(str, cfg.batches))}, "
            f"median of {cfg.repeats}; torch threads {torch.get_num_threads()})")
        log("  EAR U-Net and FADeR_EAR (interleaved) ...")
        recs, overhead = measure_models(cfg, device)
        result["records"] += [r.model_dump() for r in recs]
        result["fader_overhead"][str(device)] = overhead
        if cfg.efficiency_profile is not None:
            log(f"  EAR training and inference throughput ({cfg.efficiency_profile} profile) vs float32 matmul ...")
            eff = measure_efficiency(profile=cfg.efficiency_profile, device=device, repeats=cfg.repeats, seed=cfg.seed)
            result.setdefault("efficiency", []).append(
                {**eff.model_dump(), "train_gflops": eff.train_gflops, "infer_gflops": eff.infer_gflops})
        if device.type == "cpu" and cfg.onnx:
            log("  EAR and FADeR_EAR with the MSGMS map: torch vs onnxruntime (interleaved) ...")
            prof = get_profile(cfg.model_profile)
            fader = seeded_init(lambda: wrap_with_fader(EARUNet(prof.unet), None, prof.fader_head), cfg.seed).eval()
            onnx_recs, onnx_overhead = measure_onnx(cfg, fader)
            result["records"] += [r.model_dump() for r in onnx_recs]
            result["fader_overhead_graph"] = onnx_overhead
        for name in names:
            log(f"  masker {name} ...")
            rec = measure_masker(name, cfg, device, registry)
            if rec.status != "ok":
                log(f"    failed: {rec.reason}")
            result["records"].append(rec.model_dump())
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - t0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    md = speed_markdown(result)
    (out / "speed.md").write_text(md)
    log(md)
    log(f"written: {out / 'speed.json'}, {out / 'speed.md'} ({result['seconds']:.0f}s)")
    return result


def speed_markdown(result: dict[str, Any]) -> str:
    batches = [str(b) for b in result["config"]["batches"]]
    size = result["config"]["size"]
    head = ["device", "model", "weights", "params (M)", "GFLOPs / image"] + [f"ms / image @ batch {b}" for b in batches] \
        + [f"images / s @ batch {batches[-1]}"]
    lines = [f"### Speed ({size}x{size}; torch {result['torch']}, {result['threads']} CPU threads)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["records"]:
        if r["status"] != "ok":
            lines.append(f"| {r['device']} | {r['model']} | {r['weights'] or '--'} | failed: {r['reason']} |" + " |" * (len(head) - 4))
            continue
        cells = [r["device"], r["model"], r["weights"] or "--", f"{r['parameters'] / 1e6:.2f}",
                 _num(r["gflops_per_image"])]
        cells += [f"{r['latency_ms'][b]:.1f}" if b in r["latency_ms"] else "--" for b in batches]
        cells.append(f"{r['throughput']:.1f}" if r["throughput"] else "--")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for dev, ov in result["fader_overhead"].items():
        parts = ", ".join(f"batch {b}: {100 * v:+.1f} %" for b, v in ov.items())
        lines.append(f"FADeR's overhead over EAR on {dev} (same run, interleaved): {parts}")
    for runtime, ov in result.get("fader_overhead_graph", {}).items():
        parts = ", ".join(f"batch {b}: {100 * v:+.1f} %" for b, v in ov.items())
        lines.append(f"FADeR's overhead over EAR with the MSGMS map on cpu, {runtime} (interleaved with the other runtime): {parts}")
    lines.append("GFLOPs count matmuls and convolutions (torch.utils.flop_counter); random-init maskers run at full size.")
    for eff in result.get("efficiency", []):
        fields = {k: v for k, v in eff.items() if k in Efficiency.model_fields}
        lines += ["", Efficiency(**fields).markdown()]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    """Two decimals, or three significant digits for small values (patch_stats' 0.0048 GFLOPs)."""
    if x is None:
        return "--"
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"
