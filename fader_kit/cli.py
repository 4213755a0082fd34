"""The ``fader-kit`` command: ``maskers``, ``evaluate`` (and ``bench`` / ``report`` from benchmarks).

Errors a user can fix (a missing folder, an unknown masker, missing weights, a bad option) are
printed as one ``error:`` line and exit with status 2 (``FADER_KIT_DEBUG=1`` shows the traceback);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__

EXIT_USAGE = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe bad input rather than a bug."""
    from pydantic import ValidationError

    from .data import DataError
    from .registry import UnknownMaskerError
    from .weights import MissingWeightsError

    return (DataError, UnknownMaskerError, MissingWeightsError, ValidationError, ValueError, FileNotFoundError)


def parse_options(pairs: Sequence[str] | None, argument: str = "--masker-option") -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {argument} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_masker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="checkpoint file or folder for pretrained maskers")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run without pretrained weights (reported as random-init in every result)")
    p.add_argument("--masker-option", action="append", metavar="KEY=VALUE",
                   help="option passed to the masker factory (repeatable; JSON values)")


def masker_options(args: argparse.Namespace, device: str | None = None) -> dict[str, Any]:
    opts = parse_options(args.masker_option)
    if args.weights is not None:
        opts["weights"] = args.weights
    if args.allow_random_weights:
        opts["allow_random_weights"] = True
    if device is not None:
        opts.setdefault("device", device)
    return opts


def cmd_maskers(args: argparse.Namespace) -> int:
    from .registry import default_registry

    reg = default_registry()
    rows = []
    for entry in reg.list():
        weights = entry.weights or "?"
        if args.check:
            try:
                weights = reg.create(entry.name, **masker_options(args)).info.weights
            except Exception as exc:  # report and go on: one masker's missing weights is not fatal here
                weights = f"UNAVAILABLE ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        rows.append((entry.name, entry.plugin, weights, entry.summary))
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'masker':<{width}}  {'plugin':<12}  weights  --  summary")
    for name, plugin, weights, summary in rows:
        print(f"{name:<{width}}  {plugin:<12}  {weights}  --  {summary}")
    for err in reg.errors():
        print(f"plugin {err.plugin!r} failed at {err.stage}: {err.error}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .config import get_profile
    from .devices import resolve_device
    from .pipeline import evaluate_category
    from .registry import create_masker

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    device = resolve_device(args.device)
    masker = create_masker(args.masker, **masker_options(args, str(device)))
    result = evaluate_category(
        args.data, args.category, masker, profile, out=Path(args.out), device=device, seed=args.seed,
        ear_masks=args.ear_masks, progress=not args.quiet,
    )
    d = result.delta()
    print(f"\n{args.category} ({result.masker.name}, weights {result.masker.weights}, profile {profile.name})")
    print(f"{'':8} {'image AUROC':>12} {'pixel AUROC':>12}")
    print(f"{'EAR':8} {result.ear.image_auroc:12.3f} {result.ear.pixel_auroc:12.3f}")
    print(f"{'FADeR':8} {result.fader.image_auroc:12.3f} {result.fader.pixel_auroc:12.3f}")
    print(f"{'change':8} {d['image_auroc']:+12.3f} {d['pixel_auroc']:+12.3f}")
    print(f"metrics written to {Path(args.out) / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fader-kit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fader-kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("maskers", help="list the registered maskers and their weights source")
    p.add_argument("--check", action="store_true", help="build each masker to show the weights it really gets")
    add_masker_arguments(p)
    p.set_defaults(func=cmd_maskers)

    p = sub.add_parser("evaluate", help="train EAR and FADeR on one category and print AUROC before -> after")
    p.add_argument("--data", default="synthetic", help="synthetic | mvtec:PATH | visa:PATH (default: synthetic)")
    p.add_argument("--category", required=True)
    p.add_argument("--masker", default="patch_stats")
    add_masker_arguments(p)
    p.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/evaluate", help="output folder (default: runs/evaluate)")
    p.add_argument("--ear-masks", choices=("masker", "blobs"), default="masker",
                   help="train the EAR U-Net on the masker's masks united with random blobs (default) or on blobs only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    for extend in _extensions():
        extend(sub)
    return parser


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands contributed by the benchmarks package, when it is installed."""
    try:
        from fader_kit_bench.cli import add_commands
    except ImportError:
        return []
    return [add_commands]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        if os.environ.get("FADER_KIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished results were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
