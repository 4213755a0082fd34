"""Time the EAR training step that ``fader_kit.engine.pace`` compares with its reference.

    python -m fader_kit_bench.pace [--profile cpu] [--repeats 5] [--threads N]

Prints, per repeat, the seconds per step (``fader_kit.engine.pace.time_ear_steps``), the load average and
the CPUs other processes kept busy meanwhile, then the best and the median step and the main
job's expected duration at the best.  The reference (``fader_kit.engine.pace.REFERENCE``) is the best of
such runs on an idle machine: a step on a busy one says more about the others than about the CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Sequence

from fader_kit.util.threads import apply_torch_threads, prepare_environment


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.pace", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu", help="profile whose EAR step is timed (default: cpu)")
    p.add_argument("--repeats", type=int, default=5, help="measurements (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as the commands choose)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    prepare_environment()
    threads = apply_torch_threads(args.threads)
    from fader_kit.model.config import get_profile
    from fader_kit.util.timing import minutes
    from fader_kit.engine.pace import JobWork, busy_seconds, cpu_model, estimate_seconds, others_cpus, time_ear_steps

    profile = get_profile(args.profile)
    print(f"CPU {cpu_model()}, {os.cpu_count()} CPUs, {threads} torch threads, {profile.name} profile "
          f"({profile.image_size}px, batch {profile.ear.batch_size}), device {args.device}")
    steps = []
    for r in range(args.repeats):
        load = os.getloadavg()[0]
        b0, c0, w0 = busy_seconds(), time.process_time(), time.perf_counter()
        step = time_ear_steps(profile, args.device)
        b1, c1, w1 = busy_seconds(), time.process_time(), time.perf_counter()
        others = others_cpus((b0, b1), (c0, c1), w1 - w0)
        steps.append(step)
        print(f"repeat {r + 1}: {step:.4f} s per step; load average before {load:.2f}; other processes' CPUs "
              f"meanwhile {'?' if others is None else f'{others:.2f}'}", flush=True)
    main_job = JobWork(ear_trainings=1, fader_trainings=5, scored_models=6, n_train=60, n_test=200)
    print(f"best {min(steps):.4f} s, median {statistics.median(steps):.4f} s per step; the main job's training and "
          f"scoring at the best: ~{minutes(estimate_seconds(main_job, profile, min(steps)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
