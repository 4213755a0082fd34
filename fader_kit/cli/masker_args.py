"""The arguments commands share: the masker options (``--weights``, ``--allow-random-weights``,
``--masker-option KEY=VALUE``) and the model settings of ``evaluate`` and ``fit`` (masker,
profile, device, head variant, EAR masks, threads): one definition each, in a module of its own
so that command modules can use it without importing each other."""
from __future__ import annotations

import argparse
from typing import Any, Sequence


def parse_options(pairs: Sequence[str] | None, argument: str = "--masker-option") -> dict[str, Any]:
    from fader_kit.util.options import parse_options as parse

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


def add_model_arguments(p: argparse.ArgumentParser, masker_help: str | None = None) -> None:
    """What trains a model, as ``evaluate`` and ``fit`` take it (one default each, stated once);
    ``masker_help``: a command whose ``--masker`` defaults to ``auto`` (fit) says so."""
    from fader_kit.model.variants import DEFAULT_HEAD_VARIANT, variant_argument, variant_names

    p.add_argument("--masker", default="auto" if masker_help else "patch_stats",
                   help=masker_help or "masker name (default: patch_stats)")
    add_masker_arguments(p)
    p.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--fader-variant", type=variant_argument, default=DEFAULT_HEAD_VARIANT, metavar="NAME",
                   help=f"FADeR head variant: {', '.join(variant_names(aliases=False, core=True))} (default: "
                        f"{DEFAULT_HEAD_VARIANT}, chosen on the development grid); 'paper' (alias fader, ours) is "
                        "FADeR exactly as the paper reads; 'open_gates' the control; `fader-kit variants --all` "
                        "lists the experiments an installed plugin adds")
    p.add_argument("--ear-masks", choices=("blobs", "masker"), default="blobs",
                   help="train the EAR U-Net on random blobs only (default: one U-Net per category serves every "
                        "masker, as in the paper) or on the masker's masks united with blobs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (numbers depend on the count)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_fused_argument(p: argparse.ArgumentParser, *, per_model: str = "per model") -> None:
    """``--fused [RULE]``: also score the map fused with the masker's own score map (beyond the paper)."""
    from fader_kit.model.fusion_rules import DEFAULT_FUSION_RULE, FUSION_RULES

    p.add_argument("--fused", nargs="?", const=DEFAULT_FUSION_RULE, default=False, choices=FUSION_RULES, metavar="RULE",
                   help="also score each model's map fused with the masker's own score map (beyond the paper; one more "
                        f"pass over the training images {per_model}). RULE: how the two maps are combined, chosen on "
                        "training images only: sum, max, select (by the normal images' spread) or pseudo (the mix that "
                        "best separates pseudo-anomalies pasted into the training images; one more pass). "
                        f"Default: {DEFAULT_FUSION_RULE}")
