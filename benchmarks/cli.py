"""``fader-kit bench TABLE|speed`` and ``fader-kit report DIR`` (also ``python -m fader_kit_bench ...``).

The two commands are declared as entry points of the ``fader_kit.commands`` group (``bench`` ->
:func:`add_bench_command`, ``report`` -> :func:`add_report_command`): ``fader-kit --help`` lists them
from the package metadata without importing this module, and ``fader-kit bench`` imports it alone.
Errors a user can fix are reported by ``fader_kit.cli.main`` as one ``error:`` line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fader_kit.errors import ConfigError

from .tables import TABLES


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    return items or None


def cmd_bench(args: argparse.Namespace) -> int:
    from fader_kit.cli.main import masker_options, parse_seeds

    if args.table == "speed":
        return _speed(args)
    from .runner import BenchConfig, run_table

    out = Path(args.out or f"runs/bench-{args.profile}")
    cfg = BenchConfig(
        table=args.table, out=out, data=args.data, categories=_csv(args.categories), maskers=_csv(args.maskers),
        variants=_csv(args.variants), profile=args.profile, device=args.device or "cpu", seeds=parse_seeds(args.seeds),
        masker_options=masker_options(args), figures=args.figures, ear_masks=args.ear_masks, fused=args.fused,
        data_seed=args.data_seed,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if args.executor == "ray":
        from fader_kit.engine.ray import RayOptions

        from .runner import run_table_ray

        options = RayOptions(address=args.address, cpus_per_unit=args.cpus_per_unit, gpus_per_unit=args.gpus_per_unit,
                             threads=args.threads, max_retries=args.max_retries)
        summary = run_table_ray(cfg, options)
    else:
        if args.address is not None or args.gpus_per_unit or args.cpus_per_unit != 1.0:
            raise ConfigError("arguments --address, --gpus-per-unit and --cpus-per-unit need --executor ray")
        summary = run_table(cfg)
    if not args.no_report:
        from .report import build_report

        text, paths = build_report(out, figures=args.figures > 0)
        print("\n" + text)
        print("written: " + ", ".join(str(p) for p in paths))
    return 0 if summary.failed == 0 else 1


def _speed(args: argparse.Namespace) -> int:
    import torch

    from fader_kit.cli.main import masker_options, parse_seeds

    from .speed import SpeedConfig, run_speed

    if (args.device or "auto") == "auto":
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    else:
        devices = _csv(args.device) or ("cpu",)
    cfg = SpeedConfig(
        out=Path(args.out or "runs/speed"), maskers=_csv(args.maskers), devices=devices, size=args.size,
        batches=tuple(int(b) for b in _csv(args.batches) or (1, 8)),
        repeats=args.repeats, masker_options=masker_options(args), seed=parse_seeds(args.seeds)[0], model_profile=args.model_profile,
        onnx=not args.no_onnx,
    )
    run_speed(cfg)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    text, paths = build_report(Path(args.folder), figures=not args.no_figures)
    print(text)
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    """Register ``bench`` on the ``fader-kit`` parser (entry point ``bench`` of ``fader_kit.commands``)."""
    from fader_kit.cli.main import add_masker_arguments
    from fader_kit.cli.masker_args import add_fused_argument

    tables = ", ".join(TABLES)
    p = sub.add_parser(
        "bench", help="reproduce a table of the paper (table2..table5), run a study table (fader_head, coverage, selection) or measure speed",
        description=f"Run a benchmark table ({tables}) into a results folder (SQLite; a rerun skips finished "
                    "rows), then print its report; or 'speed' for latency, throughput, parameters and FLOPs. "
                    "--masker-option NAME.KEY=VALUE reaches masker NAME only; a plain KEY=VALUE reaches every masker.",
    )
    p.add_argument("table", choices=[*TABLES, "speed"])
    p.add_argument("--data", default="synthetic", help="synthetic | mvtec:PATH | visa:PATH (default: synthetic)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all of the data)")
    p.add_argument("--maskers", default=None,
                   help="comma-separated masker names, any registered one (default: the table's maskers; "
                        "speed: every registered masker)")
    p.add_argument("--variants", default=None, help="comma-separated variants of the table (default: all; coverage: ear,fader; "
                   "fader_head and coverage also take every head variant of `fader-kit evaluate --fader-variant`)")
    p.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N | auto (tables, default: cpu); speed: a comma list, default auto = "
                        "cpu and cuda when present")
    p.add_argument("--seeds", "--seed", default="0",
                   help="training seeds, e.g. 0,1,2 or 0-2; the report gives mean, spread and a paired bootstrap "
                        "interval of FADeR - EAR over them (default: 0)")
    p.add_argument("--out", default=None, help="results folder (default: runs/bench-PROFILE, speed: runs/speed)")
    add_masker_arguments(p)
    p.add_argument("--ear-masks", choices=("blobs", "masker"), default="blobs",
                   help="train the EAR U-Net on random blobs only, one per category shared by every masker and "
                        "variant (default), or on each masker's masks united with blobs (one per masker)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the generated synthetic data (a new seed is new data: everything is recomputed)")
    add_fused_argument(p)
    p.add_argument("--figures", type=int, default=2, help="anomalous images per figure panel, 0 = no figures (default: 2)")
    p.add_argument("--no-report", action="store_true", help="do not print the report after the run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars (unit lines are always printed)")
    x = p.add_argument_group("executor (tables)")
    x.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="serial: one unit after another in this process (default); ray: every masker fit, EAR U-Net "
                        "and unit a Ray task, on this machine or a cluster (needs the [ray] extra)")
    x.add_argument("--address", default=None,
                   help="Ray: join this cluster (e.g. auto, or ray://HEAD:10001); default: start Ray on this machine. "
                        "On a cluster --out must be a folder every node mounts at the same path")
    x.add_argument("--cpus-per-unit", type=float, default=1.0, help="Ray: CPUs each task reserves (default: 1)")
    x.add_argument("--gpus-per-unit", type=float, default=0.0,
                   help="Ray: GPUs each task reserves, e.g. 1, or 0.5 for two per GPU; needs --device cuda (default: 0)")
    x.add_argument("--max-retries", type=int, default=3,
                   help="Ray: reruns of a task whose worker process died (default: 3)")
    g = p.add_argument_group("speed")
    g.add_argument("--size", type=int, default=256, help="image side (default: 256)")
    g.add_argument("--batches", default="1,8", help="batch sizes (default: 1,8)")
    g.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement, median (default: 3)")
    g.add_argument("--model-profile", default="paper",
                   help="profile whose EAR U-Net and FADeR head are timed (default: paper, the paper's sizes)")
    g.add_argument("--no-onnx", action="store_true",
                   help="skip the onnxruntime timing of the exported graph (default: on CPU, when the [export] extra is installed)")
    p.set_defaults(func=cmd_bench)


def add_report_command(sub: argparse._SubParsersAction) -> None:
    """Register ``report`` on the ``fader-kit`` parser (entry point ``report`` of ``fader_kit.commands``)."""
    r = sub.add_parser("report", help="Markdown/CSV/PNG report of a bench results folder, with the paper's numbers")
    r.add_argument("folder", help="the --out folder of fader-kit bench")
    r.add_argument("--no-figures", action="store_true", help="skip the bar charts")
    r.set_defaults(func=cmd_report)
