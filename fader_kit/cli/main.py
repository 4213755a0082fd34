"""The ``fader-kit`` command: ``maskers``, ``plugins``, ``variants``, ``evaluate``, ``export``, and plugins' commands.

``bench`` / ``report`` are declared by the ``fader_kit_bench`` package as entry points of the
``fader_kit.commands`` group: ``fader-kit --help`` lists them from the metadata, and only the command
being run is imported, so this module imports neither ``fader_kit_bench`` nor ``fader_kit_plugins``.

Errors a user can fix (:class:`fader_kit.errors.UserError`: a missing folder, an unknown masker,
missing weights, a bad option) are printed as one ``error:`` line and exit with status 2
(``FADER_KIT_DEBUG=1`` shows the traceback); anything else is a bug: its traceback is shown, with
a line saying so, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fader_kit.version import __version__
from fader_kit.errors import BUG_HINT, ConfigError, UserError
from fader_kit.cli.masker_args import (  # noqa: F401 (re-exported)
    add_fused_argument, add_masker_arguments, add_model_arguments, masker_options, parse_options,
)

if TYPE_CHECKING:
    from fader_kit.engine.evaluate import EvaluationResult

EXIT_USAGE = 2
EXIT_BUG = 1


def cmd_maskers(args: argparse.Namespace) -> int:
    from fader_kit.maskers.registry import default_registry

    reg = default_registry()
    rows = []
    for entry in reg.list():
        weights = entry.weights or "?"
        if args.check:
            try:
                weights = reg.create(entry.name, **masker_options(args)).info.weights
            except Exception as exc:  # report and go on: one masker's missing weights is not fatal here
                weights = f"UNAVAILABLE ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        dist = entry.distribution.replace(" ", "==") or "-"
        rows.append((entry.name, entry.plugin, dist, weights, entry.summary))
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("masker", "plugin", "distribution"))]
    head = ("masker", "plugin", "distribution")
    print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths)) + "  weights  --  summary")
    for name, plugin, dist, weights, summary in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip((name, plugin, dist), widths)) + f"  {weights}  --  {summary}")
    for err in reg.errors():
        print(err, file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from fader_kit.maskers.registry import DISABLE_ENV, LOAD_ENV, default_registry

    reg = default_registry()
    rows = [(p.name, p.distribution.replace(" ", "==") or "-", p.status, ",".join(p.hooks) or "-",
             ", ".join(p.maskers) or "-") for p in reg.plugins()]
    head = ("plugin", "distribution", "status", "hooks", "maskers")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for row in [head, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row[:4], widths)) + f"  {row[4]}")
    for key in (LOAD_ENV, DISABLE_ENV):
        if key in os.environ:
            print(f"{key}={os.environ[key]!r}")
    for err in reg.errors():
        print(err, file=sys.stderr)
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    """The named FADeR head variants: the core's, or (``--all``) every installed plugin's too."""
    from fader_kit.maskers.registry import default_registry
    from fader_kit.model.variants import DEFAULT_HEAD_VARIANT, core_heads, default_heads

    heads = default_heads() if args.all else core_heads()
    rows = [(v.name + (" (default)" if v.name == DEFAULT_HEAD_VARIANT else ""), v.kind, heads.origin[v.name],
             v.description + (f" [aliases: {', '.join(v.aliases)}]" if v.aliases else "")) for v in heads.list()]
    head = ("variant", "kind", "from", "description")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for row in [head, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths)) + f"  {row[3]}")
    if not args.all:
        print("\n`fader-kit variants --all` also lists the variants installed plugins add (the experiments)")
    else:
        for err in (e for e in default_registry().errors() if e.stage == "heads"):
            print(err, file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fader_kit.model.config import get_profile
    from fader_kit.model.variants import resolve
    from fader_kit.util.devices import resolve_device
    from fader_kit.engine.evaluate import evaluate_category
    from fader_kit.engine.jobs import Head
    from fader_kit.maskers.registry import default_registry

    profile = get_profile(args.profile)
    device = resolve_device(args.device)
    options = masker_options(args)  # the category is not an option: it is in every key already
    registry = default_registry()
    registry.get(args.masker)  # an unknown name fails now, with the registered names, before any work
    head = Head(name=args.fader_variant, config=resolve(profile.fader_head, args.fader_variant))
    result = evaluate_category(
        args.data, args.category, args.masker, profile, out=Path(args.out), head=head, device=device,
        seeds=parse_seeds(args.seeds), masker_options=options, registry=registry, ear_masks=args.ear_masks,
        fused=args.fused, progress=not args.quiet, select=args.select,
    )
    print_evaluation(result)
    print(f"metrics written to {Path(args.out) / 'metrics.json'}")
    return 0


def parse_seeds(text: str, argument: str = "--seeds") -> tuple[int, ...]:
    """``0,1,2`` -> (0, 1, 2); ``0-4`` -> (0, 1, 2, 3, 4)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise ConfigError(f"argument {argument} {text!r}: expected comma-separated integers or ranges, e.g. 0,1,2 or 0-2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"argument {argument} {text!r}: expected distinct seeds")
    return tuple(seeds)


def print_evaluation(result: "EvaluationResult") -> None:
    """The before -> after table of ``fader-kit evaluate``, with the seeds' spread and the verdict."""
    n = len(result.seeds)
    print(f"\n{result.category} ({result.masker.name}, weights {result.masker.weights}, profile {result.profile}, "
          f"seed{'s' if n > 1 else ''} {','.join(map(str, result.seeds))})")
    from fader_kit.model.variants import get_variant

    # the FADeR row says which head it is ("FADeR (paper)", "FADeR (pseudo_focused)")
    fader = get_variant(result.fader_variant).label if result.fader_variant else "FADeR"
    rows = (("masker_alone", "masker alone"), ("ear", "EAR"), ("fader", fader), ("ear_fused", "EAR + masker"),
            ("fader_fused", f"{fader} + masker"))
    width = max(14, *(len(label) for _, label in rows))
    print(f"{'':{width}} {'image AUROC':>16} {'pixel AUROC':>16}")
    for name, label in rows:
        spread = result.spread.get(name)
        if spread is None:
            continue
        print(f"{label:{width}} {spread['image_auroc'].text():>16} {spread['pixel_auroc'].text():>16}")
    for c in result.comparison.values():
        print(f"{fader} - EAR   " + c.text())
    for name, label in (("ear_fused", "EAR + masker"), ("fader_fused", f"{fader} + masker")):
        for c in result.fused_comparison.get(name, {}).values():
            print(f"{label} - EAR: " + c.text())
    if result.fused_comparison:
        print("(+ masker: the map fused with the masker's own score map, each on its normal-image scale)")
    from fader_kit.model.diagnostics import summary_line

    for row in result.per_seed:
        if row.diagnostics is not None:
            print(f"seed {row.seed}: {summary_line(row.diagnostics)}")
    for row in result.per_seed:
        if row.selection is not None:
            print(f"seed {row.seed}: {row.selection.line()}")


CORE_COMMANDS = ("maskers", "evaluate", "plugins", "export", "fit", "predict", "variants")


COMMANDS_GROUP = "fader_kit.commands"
"""Entry-point group of sub-commands by name (``name = "module:register"``, ``register(subparsers)``)."""


def declared_commands() -> dict[str, importlib.metadata.EntryPoint]:
    """The sub-commands installed packages declare in :data:`COMMANDS_GROUP`, read from their metadata
    without importing them (a name that shadows a core command is ignored)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        if ep.name not in CORE_COMMANDS:
            found.setdefault(ep.name, ep)
    return found


def _add_declared(sub: argparse._SubParsersAction, ep: importlib.metadata.EntryPoint) -> None:
    try:
        register = ep.load()
    except Exception as exc:  # a broken plugin must not take the other commands down
        raise UserError(f"the command {ep.name!r} ({ep.value}) could not be loaded: {type(exc).__name__}: {exc}") from exc
    register(sub)


def _add_placeholders(sub: argparse._SubParsersAction, declared: dict[str, importlib.metadata.EntryPoint]) -> None:
    """List the declared commands in ``fader-kit --help`` without importing them."""
    for name, ep in sorted(declared.items()):
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":", 1)[0]
        sub.add_parser(name, help=f"from {dist}: fader-kit {name} --help", add_help=False)


def add_export_command(sub: argparse._SubParsersAction) -> None:
    """``fader-kit export``: a trained model as one ONNX graph."""
    p = sub.add_parser(
        "export", help="export a trained FADeR model (U-Net, head, gates, MSGMS map and score) as one ONNX graph",
        description="Write RUN_DIR/fader.pt (or a FaderModel checkpoint) as an ONNX graph with inputs images "
                    "[B,3,S,S] float in [0,1] and binary_mask [B,1,S,S] bool, and outputs anomaly_map [B,1,S,S] "
                    "and score [B]. Needs the [export] extra (onnx, onnxruntime).",
    )
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX model")
    p.add_argument("source", metavar="SOURCE",
                   help="a fader-kit fit folder (MODEL_DIR: the graph then takes images only, masker inside, "
                        "calibration in its metadata), a fader-kit evaluate --out folder (its fader.pt) or a FaderModel "
                        "checkpoint file")
    p.add_argument("--size", type=int, default=None,
                   help="image side the graph is built for (default: the run's profile image size)")
    p.add_argument("--no-head", action="store_true", help="export plain EAR (the same U-Net without FADeR's gates)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check after export")
    p.add_argument("--check-images", nargs="+", default=None, metavar="IMAGE",
                   help="detector folder only: normal images (files or folders) the check compares onnxruntime with "
                        "the torch detector on (default: the fit's held-out images, where they are on this machine)")
    p.add_argument("--int8", action="store_true",
                   help="detector folder only: write the graph with the U-Net's convolutions quantised to int8 "
                        "(faster on CPU), calibrated on the --check-images or the fit's held-out images; prints how "
                        "many of their decisions changed and how far the scores moved")
    p.set_defaults(func=cmd_export)


def build_parser(plugin_commands: bool | str = True) -> argparse.ArgumentParser:
    """The ``fader-kit`` parser.  ``plugin_commands``: True adds every command plugins add (the declared
    ones and those of the ``register_commands`` hook, which imports every plugin); a declared command's
    name adds that command alone (any other name is treated as True); False adds the declared commands'
    names only, for ``--help``: then no plugin is imported and the help answers at once."""
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
    add_model_arguments(p)
    p.add_argument("--seeds", "--seed", default="0",
                   help="training seeds, e.g. 0,1,2 or 0-2: every row reports mean, spread and a paired bootstrap "
                        "interval of FADeR - EAR over them (default: 0)")
    p.add_argument("--out", default="runs/evaluate", help="output folder (default: runs/evaluate)")
    add_fused_argument(p)
    p.add_argument("--select", action="store_true",
                   help="also refit every score kind (masker, ear, fader, fused) on 4/5 of the normal images, choose "
                        "one by pseudo-defects on the held-out 1/5 (no test label) and record its test AUROC and "
                        "regret in metrics.json (per seed: 'selection'); trains everything a second time")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plugins", help="list the installed plugins: distribution, hooks, maskers and problems")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("variants", help="list the named FADeR head variants: kind, where from, what they change")
    p.add_argument("--all", action="store_true", help="also the variants installed plugins add (the experiments)")
    p.set_defaults(func=cmd_variants)

    add_export_command(sub)

    from fader_kit.cli.deploy import add_deploy_commands

    add_deploy_commands(sub)  # fit, predict
    declared = declared_commands()
    if isinstance(plugin_commands, str) and plugin_commands in declared:
        _add_declared(sub, declared[plugin_commands])
    elif plugin_commands:  # True, or a name no package declares: perhaps a register_commands hook's
        for ep in declared.values():
            _add_declared(sub, ep)
        from fader_kit.maskers.registry import default_registry

        default_registry().register_commands(sub)  # commands of the register_commands hook (imports every plugin)
    else:
        _add_placeholders(sub, declared)
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    from fader_kit.cli.deploy import cmd_export_detector, is_detector_dir

    if is_detector_dir(args.source):  # a fader-kit fit folder: the masker goes inside the graph
        return cmd_export_detector(args)
    if args.int8:
        from fader_kit.errors import ConfigError

        raise ConfigError(f"--int8 applies to a detector folder (fader-kit fit --out), not to {args.source}")
    from fader_kit.model.onnx_export import export_onnx

    report = export_onnx(args.source, args.onnx, size=args.size, head=not args.no_head, opset=args.opset,
                         check=not args.no_check)
    print(report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in == ["--version"]:  # answered before any plugin (or torch) is imported
        print(f"fader-kit {__version__}")
        return 0
    from fader_kit.util.threads import prepare_environment

    prepare_environment()  # OpenMP threads that sleep instead of spin: before anything imports torch
    with warnings.catch_warnings():
        # plugin problems are printed once each, below or by maskers / plugins, not as warnings too
        warnings.filterwarnings("ignore", message="fader-kit plugin", category=RuntimeWarning)
        first = next((a for a in args_in if not a.startswith("-")), None)
        # a core command or `fader-kit --help` imports no plugin; a declared command imports its own module
        # only; any other name loads every plugin, for the commands of the register_commands hook
        wanted: bool | str = False if first is None or first in CORE_COMMANDS else first
        args = build_parser(plugin_commands=wanted).parse_args(args_in)
    if args.command not in ("maskers", "plugins", "variants"):
        from fader_kit.maskers.registry import default_registry

        for err in default_registry().errors():
            print(f"warning: {err}", file=sys.stderr)
    try:
        if "threads" in vars(args):  # every command that trains or predicts: --threads, else the usable CPUs
            from fader_kit.util.threads import apply_torch_threads

            apply_torch_threads(args.threads)
        return int(args.func(args) or 0)
    except UserError as exc:
        if os.environ.get("FADER_KIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished results were kept", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"internal error: {BUG_HINT}", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
