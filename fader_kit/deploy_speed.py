"""Throughput of ``fader-kit predict`` end to end: decode, masker, FADeR + map, decisions, writing.

``python -m fader_kit.deploy_speed [MODEL_DIR] --images 300 --threads 2`` writes that many PNG
files (256 px, a textured part, some with a defect) to a temporary folder and predicts them with
overlays for flagged images only, printing images/s, wall and CPU time, the thread count and each
step's share.  Without MODEL_DIR it builds an untrained detector of the ``cpu`` profile with a
fitted ``patch_stats`` masker: training changes the weights, not the work, so the speed is the
same as a fitted one's.  Numbers depend on what else runs on the machine: say so beside them.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, side: int = 256, seed: int = 0) -> list[Path]:
    """``n`` PNG parts: a smooth gradient with noise, every fifth with a dark scratch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = (100 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0))[..., None] * np.array([1.0, 0.95, 0.9])
    paths = []
    for i in range(n):
        img = base + rng.normal(0, 6, base.shape)
        if i % 5 == 4:
            y = rng.integers(20, side - 40)
            img[y : y + 6, 30 : side - 30] = 15
        p = folder / f"part{i:05d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, compress_level=1)
        paths.append(p)
    return paths


def untrained_detector(profile_name: str = "cpu", seed: int = 0, n_normal: int = 16):
    """A :class:`~fader_kit.detector.Detector` with the profile's U-Net and head untrained, patch_stats
    fitted and the calibration taken on generated normal images (for timing only)."""
    from . import __version__
    from .calibration import calibrate
    from .config import get_profile
    from .detector import FORMAT, FORMAT_VERSION, Detector, DetectorSettings, Manifest, TrainingSummary
    from .fader import wrap_with_fader
    from .imagefiles import load_array, to_tensor
    from .pipeline import environment
    from .registry import default_registry
    from .training import seeded_init
    from .unet import EARUNet
    from .variants import DEFAULT_HEAD_VARIANT
    from .variants import resolve as resolve_variant

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


def main(argv: list[str] | None = None) -> int:
    from .detector import Detector, make_decision
    from .predicting import predict_files, timing_report

    p = argparse.ArgumentParser(prog="python -m fader_kit.deploy_speed", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None, help="detector folder (default: an untrained cpu-profile one)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--maps", choices=("flagged", "all", "none"), default="flagged")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model) if args.model else untrained_detector()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        paths = write_images(folder, args.images)
        detector.score_batch(torch.rand(2, 3, detector.image_size, detector.image_size))  # warm-up (oneDNN kernels)
        summary = predict_files(detector, make_decision(detector.calibration), paths, Path(tmp) / "out",
                                identity={"model": "speed"}, maps=args.maps, batch_size=args.batch_size,
                                workers=args.workers, progress=False)
    print(f"{detector.settings.profile} profile, {detector.image_size} px, masker {detector.settings.masker}, "
          f"batch {args.batch_size}, {args.workers} decoding threads, {summary.flagged} flagged ({summary.overlays} "
          "overlays written)")
    print(timing_report(summary))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
