"""The masker options every command shares (``--weights``, ``--allow-random-weights``,
``--masker-option KEY=VALUE``): one definition for ``evaluate``, ``maskers``, ``fit`` and the rest,
in a module of its own so that command modules can use it without importing each other."""
from __future__ import annotations

import argparse
from typing import Any, Sequence


def parse_options(pairs: Sequence[str] | None, argument: str = "--masker-option") -> dict[str, Any]:
    from .util.options import parse_options as parse

    return parse(pairs, argument)


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
