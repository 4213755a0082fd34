"""Time the README's main job end to end: ``fader-kit bench table3 --data synthetic --profile cpu
--categories washer`` into a fresh results folder (report and figures included).

    python -m fader_kit_bench.main_job [--threads N] [--fresh-data] [--out DIR]

Prints the expected duration before the work starts (and a line when this machine is far slower
than the reference: :mod:`fader_kit.engine.pace`), then the wall time, the CPU time of the process (all
its threads), the thread count, the load average before and after (a busy machine makes the wall
time say little), and the rows, so that a change that should not move the numbers can be diffed
digit for digit against an earlier run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from fader_kit.util.threads import apply_torch_threads, prepare_environment


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.main_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as the README's job)")
    p.add_argument("--fresh-data", action="store_true", help="generate the synthetic category anew (a fresh clone)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: a new temporary folder)")
    args = p.parse_args(argv)
    prepare_environment()  # as the command line does, before torch is imported
    import torch

    apply_torch_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fader-main-job-") as tmp:
        if args.fresh_data:
            os.environ["FADER_KIT_CACHE"] = str(Path(tmp) / "data-cache")
        out = args.out or Path(tmp) / "run"
        from fader_kit.engine.store import ResultStore

        from .report import build_report
        from .runner import BenchConfig, run_table

        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        run_table(BenchConfig(table="table3", out=out, data="synthetic", categories=("washer",), profile="cpu"),
                  log=lambda line: print(line) if line.startswith(("pace:", "warning:")) else None)
        build_report(out)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"main job: {wall:.1f} s wall, {cpu:.1f} s CPU, {torch.get_num_threads()} threads, "
              f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
        for r in sorted(ResultStore(out).rows(), key=lambda r: r.unit.variant):
            print(f"  {r.unit.variant:10} image {r.image_auroc!r} pixel {r.pixel_auroc!r} "
                  f"aupro {r.pixel_aupro!r} f1 {r.image_f1_max!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
