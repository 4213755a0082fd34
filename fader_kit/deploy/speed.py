"""Throughput of ``fader-kit predict`` end to end, per engine: decode, score, decide, write.

``python -m fader_kit.deploy.speed [MODEL_DIR] --images 300 --threads 2`` writes that many PNG
files (``--side`` px, a textured part, every fifth with a scratch) to a temporary folder and
predicts them with each ``--engine`` (``torch``: the detector as ``predict`` runs it, BatchNorms
folded into the convolutions; ``onnx``: its exported
graph under onnxruntime; ``int8``: that graph with the U-Net's convolutions in int8, calibrated on
other generated normal images), overlays for flagged images only (``--maps``).  It prints the
machine (CPU model, usable CPUs, load average), then per engine images/s, wall and CPU time, the
threads, each step's share of the wall time, and -- for ``onnx`` and ``int8`` -- how many decisions
differ from the torch engine's on the same images and by how much the scores do.  Exporting and
quantising are not timed (done once, ahead of deployment).

Without MODEL_DIR it builds an untrained detector of the ``cpu`` profile (128 px) with a fitted
``patch_stats`` masker: training changes the weights, not the work, so the speed is the same as a
fitted one's.  Numbers depend on what else runs on the machine: the load average printed beside
them says how busy it was.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ENGINES = ("torch", "onnx", "int8")


def write_images(folder: Path, n: int, side: int = 128, seed: int = 0) -> list[Path]:
    """``n`` PNG parts: a smooth gradient with noise, every fifth with a dark scratch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = (100 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0))[..., None] * np.array([1.0, 0.95, 0.9])
    paths = []
    for i in range(n):
        img = base + rng.normal(0, 6, base.shape)
        if i % 5 == 4:
            y = rng.integers(side // 6, side - side // 3)
            img[y : y + max(2, side // 20), side // 4 : side - side // 4] = 15
        p = folder / f"part{i:05d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, compress_level=1)
        paths.append(p)
    return paths


def untrained_detector(profile_name: str = "cpu", seed: int = 0, n_normal: int = 16):
    """A :class:`~fader_kit.deploy.detector.Detector` with the profile's U-Net and head untrained, patch_stats
    fitted and the calibration taken on generated normal images (for timing only)."""
    from fader_kit.version import __version__
    from fader_kit.deploy.thresholds import calibrate
    from fader_kit.model.config import get_profile
    from fader_kit.deploy.detector import FORMAT, FORMAT_VERSION, Detector, DetectorSettings, Manifest, TrainingSummary
    from fader_kit.model.fader import wrap_with_fader
    from fader_kit.deploy.imagefiles import load_array, to_tensor
    from fader_kit.model.pipeline import environment
    from fader_kit.maskers.registry import default_registry
    from fader_kit.model.training import seeded_init
    from fader_kit.model.unet import EARUNet
    from fader_kit.model.variants import DEFAULT_HEAD_VARIANT
    from fader_kit.model.variants import resolve as resolve_variant

    profile = get_profile(profile_name)
    head = resolve_variant(profile.fader_head, DEFAULT_HEAD_VARIANT)
    with tempfile.TemporaryDirectory() as tmp:
        images = to_tensor([load_array(p, profile.image_size)[0] for p in write_images(Path(tmp), n_normal, seed=seed + 1)])
    masker = default_registry().create("patch_stats")
    masker.fit(images, seed=seed)
    model = seeded_init(lambda: wrap_with_fader(EARUNet(profile.unet), None, head), seed).eval()
    if model.calibration is not None:
        model.calibrate(images, masker.mask(images))
    settings = DetectorSettings(profile=profile.name, image_size=profile.image_size, masker="patch_stats",
                                fader_variant=DEFAULT_HEAD_VARIANT, fader_config=head.model_dump(mode="json"),
                                unet_config=profile.unet.model_dump(mode="json"), seed=seed, holdout=0.15,
                                false_alarm_rate=0.01)
    summary = TrainingSummary(normal_folder="(generated, untrained: for timing only)", n_images=n_normal, n_train=0,
                              n_holdout=n_normal, holdout_files=[], device="cpu", seconds={},
                              masker_info=masker.info.model_dump(mode="json"), created_at="")
    manifest = Manifest(format=FORMAT, format_version=FORMAT_VERSION, created_by=f"fader-kit {__version__}",
                        settings=settings, training=summary, environment=environment())
    detector = Detector(model, masker, calibrate(model.anomaly_map(images, masker.mask(images)), 0.01), manifest)
    return detector


def machine() -> str:
    """One line: CPU model, the CPUs this process may use, the load average (how busy the machine was)."""
    import os
    import platform

    from fader_kit.util.threads import usable_cpus

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        load = "load average unknown"
    return f"CPU: {model}; {usable_cpus()} usable CPU(s); {load}"


def scorers(detector: Any, engines: list[str], folder: Path, threads: int, seed: int = 7) -> dict[str, Any]:
    """``{engine: scorer}``: the detector itself, its exported graph, the int8 graph (calibrated on
    32 generated normal images of another seed)."""
    from fader_kit.deploy.inference import inference_detector

    out: dict[str, Any] = {"torch": inference_detector(detector)} if "torch" in engines else {}
    if "onnx" in engines or "int8" in engines:
        from fader_kit.deploy.export import OnnxScorer, write_detector_graph

        graph = write_detector_graph(detector, folder / "detector.onnx")
        if "onnx" in engines:
            out["onnx"] = OnnxScorer(graph, threads)
        if "int8" in engines:
            from fader_kit.deploy.imagefiles import load_array, to_tensor
            from fader_kit.deploy.quantize import quantize_graph

            calib = folder / "calibration"
            calib.mkdir()
            images = to_tensor([load_array(p, detector.image_size)[0]
                                for p in write_images(calib, 32, detector.image_size, seed)])
            out["int8"] = OnnxScorer(quantize_graph(graph, folder / "detector-int8.onnx", images), threads)
    return out


def scores_of(csv_path: Path) -> dict[str, float]:
    import csv

    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(fh) if row["score"]}


def main(argv: list[str] | None = None) -> int:
    from fader_kit.util.threads import prepare_environment

    prepare_environment()  # as the command line does, before torch is imported
    import torch

    from fader_kit.deploy.detector import Detector, make_decision
    from fader_kit.deploy.predict import predict_files, timing_report
    from fader_kit.deploy.quantize import score_parity

    p = argparse.ArgumentParser(prog="python -m fader_kit.deploy.speed", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None, help="detector folder (default: an untrained cpu-profile one)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--side", type=int, default=None, help="side of the generated PNGs (default: the detector's)")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default: 2)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--maps", choices=("flagged", "all", "none"), default="flagged")
    p.add_argument("--engine", default="torch,onnx,int8",
                   help="comma-separated engines to time: torch, onnx, int8 (default: all three)")
    args = p.parse_args(argv)
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        p.error(f"--engine {args.engine!r}: choose from {', '.join(ENGINES)}")
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model) if args.model else untrained_detector()
    decision = make_decision(detector.calibration)
    print(machine())
    print(f"{detector.settings.profile} profile, {detector.image_size} px, masker {detector.settings.masker}, "
          f"{args.images} PNGs of {args.side or detector.image_size} px, batch {args.batch_size}, {args.workers} "
          f"decoding threads, {args.threads} compute threads, overlays: {args.maps}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        paths = write_images(folder / "in", args.images, args.side or detector.image_size)
        reference: dict[str, float] | None = None
        for name, scorer in scorers(detector, engines, folder, args.threads).items():
            scorer.score_batch(torch.rand(2, 3, detector.image_size, detector.image_size))  # warm-up
            summary = predict_files(scorer, decision, paths, folder / name, identity={"model": name}, maps=args.maps,
                                    batch_size=args.batch_size, workers=args.workers, progress=False)
            print(f"{name}: {summary.flagged} flagged ({summary.overlays} overlays written)")
            print("  " + timing_report(summary))
            scores = scores_of(folder / name / "predictions.csv")
            if reference is None and name == "torch":
                reference = scores
            elif reference is not None:
                keys = sorted(reference)
                parity = score_parity(np.array([reference[k] for k in keys]), np.array([scores[k] for k in keys]),
                                      decision.image_threshold)
                print("  " + parity.summary(f"{name} vs torch"))
    print(machine())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
