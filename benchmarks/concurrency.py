"""Jobs at once on a shared machine: N concurrent ``fader-kit fit`` against one alone.

    python -m fader_kit_bench.concurrency --jobs 1 2 3 [--repeats 3] [--profile smoke]
        [--before DIR] [--source DIR] [--env KEY=VALUE ...]

Each measurement starts N ``fader-kit fit --profile smoke`` processes at the same moment on the
same generated normal images (synthetic ``washer``, 60 images, 51 trained on), waits for all of
them, and records each one's wall time and CPU time (user + system, every thread, from
``wait4``).  It prints one line per measurement with the load average before it (other
programs on the machine make a wall time say little), then, per N, the mean wall and CPU time of
a job and the ratio of its wall time to one job alone.  Two cores shared by three jobs should
cost about 3x; OpenMP threads that spin while waiting cost far more.

``--before DIR`` also measures the fader-kit found in DIR (a checkout of an earlier version),
interleaved with this one in every repeat, to compare before and after under the same load;
``--source DIR`` measures DIR's instead of this one.  The jobs get
this process's environment without ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` (what a user who
set nothing has), plus ``--env`` settings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CLEARED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class Job:
    wall: float
    cpu: float
    status: int


@dataclass(frozen=True)
class Measurement:
    jobs: int
    load: float
    results: tuple[Job, ...]

    @property
    def wall(self) -> float:
        return statistics.mean(j.wall for j in self.results)

    @property
    def cpu(self) -> float:
        return statistics.mean(j.cpu for j in self.results)


def job_environment(source: Path | None, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_jobs(n: int, command: list[str], out: Path, env: dict[str, str]) -> Measurement:
    """Start ``n`` copies of ``command`` (each with its own ``--out``) at once, in ``out`` (not this
    folder, whose fader_kit would shadow ``--source``); wait for all."""
    import subprocess

    load = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    procs, started = [], {}
    for k in range(n):
        with open(out / f"job{k}.stderr", "wb") as err:  # a file, not a pipe: a chatty job cannot block on it
            p = subprocess.Popen([*command, "--out", str(out / f"job{k}")], env=env, cwd=out,
                                 stdout=subprocess.DEVNULL, stderr=err)
        procs.append(p)
        started[p.pid] = time.perf_counter()
    by_pid = {p.pid: p for p in procs}
    done: dict[int, Job] = {}
    while len(done) < n:  # whichever ends first: each job's own wall time
        pid, status, usage = os.wait4(-1, 0)
        if pid not in by_pid:
            continue
        wall = time.perf_counter() - started[pid]
        p = by_pid[pid]
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err = (out / f"job{procs.index(p)}.stderr").read_text(errors="replace")
            raise SystemExit(f"a job failed with status {p.returncode}:\n{err[-2000:]}")
        done[pid] = Job(wall, usage.ru_utime + usage.ru_stime, p.returncode)
    return Measurement(n, load, tuple(done[p.pid] for p in procs))


def summarise(measurements: list[Measurement]) -> list[str]:
    """Per job count: mean wall and CPU seconds of one job, and the wall ratio to one job alone."""
    by_n: dict[int, list[Measurement]] = {}
    for m in measurements:
        by_n.setdefault(m.jobs, []).append(m)
    alone = statistics.mean(m.wall for m in by_n[1]) if 1 in by_n else None
    lines = [f"{'jobs':>4} {'wall/job s':>11} {'CPU/job s':>10} {'x one alone':>12} {'load before':>12}"]
    for n, ms in sorted(by_n.items()):
        wall = statistics.mean(m.wall for m in ms)
        cpu = statistics.mean(m.cpu for m in ms)
        ratio = f"{wall / alone:.2f}" if alone else "-"
        loads = ", ".join(f"{m.load:.2f}" for m in ms)
        lines.append(f"{n:>4} {wall:>11.1f} {cpu:>10.1f} {ratio:>12} {loads:>12}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fader_kit_bench.concurrency", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 3], help="job counts to measure (default: 1 2 3)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per job count, interleaved (default: 3)")
    p.add_argument("--profile", default="smoke", help="profile of fader-kit fit (default: smoke)")
    p.add_argument("--source", type=Path, default=None,
                   help="run the fader-kit package found in this folder (another checkout) instead of this one")
    p.add_argument("--before", type=Path, default=None, metavar="DIR",
                   help="also measure the fader-kit in DIR (an earlier checkout), interleaved with this one in every "
                        "repeat, so that both see the same load")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the jobs' environment")
    args = p.parse_args(argv)
    extra = dict(e.split("=", 1) for e in args.env)
    variants = {"this": job_environment(args.source, extra)}
    if args.before is not None:
        variants["before"] = job_environment(args.before, extra)
    import subprocess

    print(f"CPU {_cpu_model()}, {os.cpu_count()} CPUs; job environment adds {extra or 'nothing'}")
    for name, env in variants.items():
        where = subprocess.run([sys.executable, "-c", "import fader_kit; print(fader_kit.__file__)"], env=env,
                               cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True).stdout.strip()
        print(f"{name}: fader-kit from {where}")
    with tempfile.TemporaryDirectory(prefix="fader-concurrency-") as tmp:
        from fader_kit.data.synthetic import ensure_synthetic

        normal = ensure_synthetic("washer", cache_dir=Path(tmp) / "data") / "train" / "good"
        command = [sys.executable, "-m", "fader_kit", "fit", "--normal", str(normal), "--profile", args.profile,
                   "--quiet"]
        measured: dict[str, list[Measurement]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, env in variants.items():
                for n in args.jobs:
                    m = run_jobs(n, command, Path(tmp) / f"{name}-r{r}-n{n}", env)
                    measured[name].append(m)
                    walls = ", ".join(f"{j.wall:.1f}" for j in m.results)
                    cpus = ", ".join(f"{j.cpu:.1f}" for j in m.results)
                    print(f"{name}, repeat {r + 1}, {n} job(s): wall {walls} s; CPU {cpus} s; load average before "
                          f"{m.load:.2f}", flush=True)
    for name, ms in measured.items():
        print(f"\n{name}:")
        print("\n".join(summarise(ms)))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
