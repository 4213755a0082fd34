"""``fader-kit fit`` and ``fader-kit predict`` (and ``export`` of a detector folder).

Nothing heavy is imported at module level, so ``fader-kit --help`` stays fast; each handler
imports what it runs.  Exit status of ``predict``: 0 when every image was read, 3 when some files
could not be read (each is named in the CSV and on stderr), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_deploy_commands(sub: Any) -> None:
    """Add ``fit`` and ``predict`` to the ``fader-kit`` sub-command parsers ``sub``."""
    add_fit_command(sub)
    add_predict_command(sub)


def add_fit_command(sub: Any) -> None:
    from fader_kit.cli.masker_args import add_model_arguments

    p = sub.add_parser(
        "fit", help="train a detector on a folder of normal images and calibrate its thresholds",
        description="Train the masker and what --score needs (the EAR U-Net, the FADeR head) on the images under "
                    "--normal (recursively), holding out a seeded share to set the thresholds at --false-alarm-rate; "
                    "write a self-contained detector folder (safetensors + JSON + model card) to --out. By default "
                    "(--score auto --masker auto) every masker x score candidate is fitted and the one that best "
                    "separates the held-out images from the same images with synthetic defects (or, with "
                    "--validation, the best on labelled images) is kept; the table of candidates is printed and "
                    "saved with it.",
    )
    p.add_argument("--normal", required=True, metavar="DIR", help="folder of normal images (searched recursively)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="detector folder to write")
    add_model_arguments(p, masker_help="masker name, or auto (default): choose among --candidates")
    from fader_kit.deploy.score_kinds import SCORE_NAMES

    p.add_argument("--score", choices=("auto", *SCORE_NAMES), default="auto",
                   help="what the detector scores with: auto (default: choose among all below), masker (the masker's "
                        "own score map; no U-Net trained), ear (plain EAR), fader (EAR with the FADeR head), fused "
                        "(plain EAR's map fused with the masker's, the mix chosen on pseudo-anomalies)")
    p.add_argument("--candidates", type=names_argument, default=None, metavar="M1,M2",
                   help="with --masker auto: the maskers to choose among, any registered name (default: "
                        "patch_stats,msflow,ami_net)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="with auto: stop fitting candidates (cheapest first) once this many seconds are spent; the "
                        "ones skipped are named (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="training and hold-out seed (default: 0)")
    p.add_argument("--holdout", type=float, default=0.15,
                   help="normal images held out to calibrate: a share (default: 0.15, grown to what "
                        "--false-alarm-rate needs where at least half the images stay to train on) or a count "
                        "such as 40; at least 5 images")
    p.add_argument("--false-alarm-rate", type=float, default=0.01,
                   help="expected share of new normal images the image threshold flags (default: 0.01; it needs "
                        "at least 1/rate - 1 held-out images)")
    p.add_argument("--validation", metavar="DIR", default=None,
                   help="labelled folder in the MVTec layout (test/good, test/<defect>, ground_truth/): adds the "
                        "validation AUROC and the F1-optimal threshold; with auto, the validation AUROC chooses")
    p.add_argument("--batch-size", type=int, default=16, help="prediction batch size stored with the detector")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the detector folder already at --out (only once the new one is complete)")
    p.set_defaults(func=cmd_fit)


def add_predict_command(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="judge new images with a fitted detector: predictions.csv and heat-map overlays",
        usage="fader-kit predict [MODEL_DIR] INPUT... --out DIR [--onnx MODEL.onnx] [options]",
        description="Score files, folders (recursive) or glob patterns with the detector in MODEL_DIR (or the ONNX "
                    "graph given with --onnx, then no MODEL_DIR), appending one row per image to DIR/predictions.csv "
                    "and writing a heat-map overlay for each flagged image. A rerun into the same DIR skips images "
                    "already predicted. Exit status: 0 all read, 3 some files unreadable (named in the CSV and on "
                    "stderr), 2 usage error.",
    )
    p.add_argument("items", nargs="+", metavar="MODEL_DIR INPUT", help="the detector folder, then the inputs")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--onnx", metavar="MODEL.onnx", default=None,
                   help="run this exported detector graph with onnxruntime instead of a detector folder")
    p.add_argument("--threshold", default=None, metavar="T",
                   help="flag images whose raw score is above T (the calibrated image threshold is printed by fit "
                        "and stored in calibration.json), or 'f1' for the validation's F1-optimal threshold")
    p.add_argument("--false-alarm-rate", type=float, default=None, metavar="R",
                   help="re-derive the thresholds at this false-alarm rate from the held-out normal scores")
    p.add_argument("--maps", choices=("flagged", "all", "none"), default="flagged",
                   help="which images get an overlay PNG (default: flagged)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the detector's, 16)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2; 0 decodes in line)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="where a masker with a pretrained backbone finds it on this machine (overrides the path "
                        "stored at fit time; not needed for patch_stats)")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads")
    p.add_argument("--overwrite", action="store_true", help="start DIR's predictions again instead of resuming")
    p.add_argument("--timings", action="store_true",
                   help="print images/s, wall and CPU time and each step's share (decode, masker, FADeR + map, write)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_fit(args: argparse.Namespace) -> int:
    from fader_kit.cli.masker_args import masker_options
    from fader_kit.model.config import get_profile
    from fader_kit.util.devices import resolve_device
    from fader_kit.deploy.fit import fit_detector

    device = resolve_device(args.device)
    profile = get_profile(args.profile)
    announce_fit_pace(args, profile, str(device))
    if "auto" in (args.score, args.masker):
        from fader_kit.deploy.auto_select import fit_auto

        detector, _ = fit_auto(
            args.normal, masker=args.masker, score=args.score, candidates=args.candidates, budget_s=args.budget,
            profile=profile, out=args.out, masker_options=masker_options(args), head_variant=args.fader_variant,
            seed=args.seed, device=device, holdout=args.holdout, false_alarm_rate=args.false_alarm_rate,
            validation=args.validation, ear_masks=args.ear_masks, batch_size=args.batch_size,
            progress=not args.quiet, overwrite=args.overwrite)
        return fit_done(detector, args.out)
    if args.candidates or args.budget is not None:
        from fader_kit.errors import ConfigError

        raise ConfigError(f"arguments --candidates / --budget choose among candidates: they need --score auto or "
                          f"--masker auto (got --score {args.score} --masker {args.masker})")
    detector = fit_detector(
        args.normal, masker=args.masker, profile=profile, out=args.out,
        masker_options=masker_options(args), head_variant=args.fader_variant, seed=args.seed, device=device,
        holdout=args.holdout, false_alarm_rate=args.false_alarm_rate, validation=args.validation,
        ear_masks=args.ear_masks, batch_size=args.batch_size, progress=not args.quiet, overwrite=args.overwrite,
        score=args.score,
    )
    return fit_done(detector, args.out)


def fit_done(detector: Any, out: str) -> int:
    print(detector.calibration.summary())
    print(f"detector written to {out} (model card: {Path(out) / 'README.md'})")
    return 0


def names_argument(text: str) -> list[str]:
    """``a,b,c`` as a list of names (blanks dropped)."""
    return [n.strip() for n in text.split(",") if n.strip()]


def announce_fit_pace(args: argparse.Namespace, profile: Any, device: str) -> None:
    """Before a long fit: the expected duration, and a line when this machine is far slower than the
    reference (:mod:`fader_kit.engine.pace`).  A problem with the inputs is left for the fit to report."""
    from fader_kit.deploy.fit import holdout_split
    from fader_kit.deploy.imagefiles import normal_images
    from fader_kit.engine.pace import JobWork, announce

    from fader_kit.deploy.auto_select import plan

    try:
        train, held = holdout_split(len(normal_images(args.normal)), args.holdout, args.seed)
        maskers, kinds = plan(args.masker, args.score, args.candidates)
    except Exception:  # the fit names the problem
        return
    if not any(k.unet for k in kinds):
        return  # maskers alone: no U-Net is trained
    ears = 1 if args.ear_masks == "blobs" else len(maskers)  # one U-Net on blobs serves every masker
    n = len(maskers) * len(kinds)
    announce(JobWork(ear_trainings=ears, fader_trainings=len(maskers) * any(k.head for k in kinds), scored_models=n,
                     n_train=len(train), n_test=len(held) * (1 + 2 * 4 if n > 1 else 1)), profile, device)


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from fader_kit.deploy.detector import FILES, Detector, make_decision, sha256_of
    from fader_kit.util.devices import resolve_device
    from fader_kit.deploy.imagefiles import expand_inputs
    from fader_kit.deploy.predict import detector_identity, predict_files, run_identity, timing_report
    from fader_kit.util.files import writable_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    writable_folder(args.out)  # before loading anything
    items = list(args.items)
    if args.onnx is not None:
        from fader_kit.deploy.export import OnnxScorer

        if is_detector_dir(items[0]):
            from fader_kit.errors import ConfigError

            raise ConfigError(f"with --onnx the graph is the model: drop the detector folder {items[0]} from the inputs")
        scorer: Any = OnnxScorer(args.onnx, threads=args.threads)
        calibration, model_id = scorer.calibration, {Path(args.onnx).name: sha256_of(Path(args.onnx))}
        batch_size = args.batch_size or 16
    else:
        if len(items) < 2:
            from fader_kit.errors import ConfigError

            raise ConfigError("predict needs a detector folder and at least one input: fader-kit predict MODEL_DIR "
                              "INPUT... --out DIR")
        overrides = {"weights": args.weights} if args.weights else None
        folder = Path(items.pop(0))
        from fader_kit.deploy.inference import inference_detector

        scorer = inference_detector(Detector.load(folder, device=resolve_device(args.device), masker_options=overrides))
        calibration, model_id = scorer.calibration, detector_identity(folder, FILES)
        batch_size = args.batch_size or scorer.settings.batch_size
    decision = make_decision(calibration, args.threshold, args.false_alarm_rate)
    out_dir = Path(args.out).resolve()
    # the output folder may sit inside an input folder: its overlays are results, not inputs
    paths = [p for p in expand_inputs(items) if out_dir not in p.resolve().parents]
    identity = run_identity(model_id, decision, args.maps)
    summary = predict_files(scorer, decision, paths, args.out, identity=identity, maps=args.maps,
                            batch_size=batch_size, workers=args.workers, progress=not args.quiet,
                            overwrite=args.overwrite)
    out = Path(args.out)
    for w in decision.calibration.warnings if args.false_alarm_rate is not None else []:
        print(f"warning: {w}", file=sys.stderr)
    print(f"predicted {summary.predicted} images ({summary.flagged} flagged as anomalous) with threshold: "
          f"{decision.label}; skipped {summary.skipped} already in {out / 'predictions.csv'}; "
          f"{len(summary.failed)} unreadable")
    print(f"wrote {out / 'predictions.csv'} and {summary.overlays} overlay(s) in {out / 'maps'}")
    if args.timings:
        print(timing_report(summary))
    return summary.exit_status


def cmd_export_detector(args: argparse.Namespace) -> int:
    """``fader-kit export --onnx OUT MODEL_DIR``: the detector with its masker inside the graph."""
    from fader_kit.deploy.export import export_detector
    from fader_kit.errors import ConfigError

    if args.no_head:
        raise ConfigError("--no-head does not apply to a detector folder: its calibration is for the score it was "
                          "fitted with (fit --score ear gives a plain EAR detector)")
    from fader_kit.deploy.detector import read_manifest

    size = read_manifest(Path(args.source)).settings.image_size
    if args.size is not None and args.size != size:
        raise ConfigError(f"--size {args.size}: the detector in {args.source} works at {size} px")
    report = export_detector(args.source, args.onnx, opset=args.opset, check=not args.no_check,
                             check_images=args.check_images, int8=args.int8)
    print(report.summary().replace(
        f"inputs: images float32 [B,3,{report.size},{report.size}] in [0,1], binary_mask bool "
        f"[B,1,{report.size},{report.size}]",
        f"inputs: images float32 [B,3,{report.size},{report.size}] in [0,1] (masker inside the graph)"))
    print(f"calibration and settings stored in the graph's metadata; run it with: fader-kit predict --onnx "
          f"{args.onnx} INPUT... --out DIR")
    return 0


def is_detector_dir(source: str) -> bool:
    return (Path(source) / "detector.json").is_file()
