"""How many CPU threads a fader-kit process uses, and how its OpenMP threads wait.

Why this exists: torch's CPU kernels run on OpenMP threads that, by default, *spin* for a while
(GNU OpenMP: 300,000 rounds, a few milliseconds) after each parallel region instead of sleeping.
Alone on a machine that saves the wake-up; with two or three jobs on two cores (an inspection PC
running other software, a user starting two commands) the spinning threads burn the time the
other jobs' threads need: three jobs took five to six times as long as one instead of three.
Sleeping at once (``OMP_WAIT_POLICY=PASSIVE`` alone) fixes that but makes a job alone about 1.5x
slower per training step: the threads then sleep in every short gap between two regions.  A
short spin (``GOMP_SPINCOUNT=3000``, tens of microseconds) bridges those gaps and still leaves the
CPU to others soon: measured, one job as fast as before, three at once about 3x
(docs/results/concurrency.md).  OpenMP reads these once, when the library is loaded, so they
must be in the environment *before* torch is imported: the command line sets them first thing
(:func:`prepare_environment`), and child processes (Ray workers) inherit them.  The GNU OpenMP
that torch's pip wheels ship honours both; LLVM's and Intel's read ``OMP_WAIT_POLICY`` (PASSIVE
there also makes the block time 0 unless ``KMP_BLOCKTIME`` is set) and ignore the spin count.

The thread count: torch starts as many threads as the CPUs in the process's affinity mask, but
not fewer when a container's CPU quota (cgroup ``cpu.max`` / ``cpu.cfs_quota_us``) allows less;
then its threads are throttled in turn.  :func:`usable_cpus` takes the smaller of the two.

A value the user set always wins: an ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``OMP_NUM_THREADS``
already in the environment is left alone (and a user's wait policy gets no spin count of ours),
and ``--threads N`` overrides the count.  This module imports no torch (the command line calls
it before anything else); :func:`apply_torch_threads` imports torch when it is called.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, MutableMapping

from fader_kit.errors import ConfigError

#: What the environment gets when the user has not set it (see the module's docstring).
QUIET_OPENMP: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def openmp_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of :data:`QUIET_OPENMP` that ``environ`` lacks.  ``GOMP_SPINCOUNT`` only where
    the user chose no wait policy either: who sets ``OMP_WAIT_POLICY`` gets exactly that policy."""
    added = {k: v for k, v in QUIET_OPENMP.items() if k not in environ}
    if "OMP_WAIT_POLICY" in environ:
        added.pop("GOMP_SPINCOUNT", None)
    return added


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :func:`openmp_defaults` into ``environ`` (default: ``os.environ``); return what was set.
    Call before torch is imported: OpenMP reads it once, when it is loaded."""
    env = os.environ if environ is None else environ
    added = openmp_defaults(env)
    env.update(added)
    return added


def worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP settings a worker process should start with: the user's where set, else ours
    (for executors that start processes in an environment of their own, such as Ray's)."""
    env = os.environ if environ is None else environ
    return {**{k: env[k] for k in QUIET_OPENMP if k in env}, **openmp_defaults(env)}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, cgroup_path: str) -> list[Path]:
    """The folders of ``cgroup_path`` under ``root``, deepest first, up to ``root`` itself; just
    ``root`` when the path is not there (a container shows its own cgroup at the mount's root)."""
    leaf = root / cgroup_path.strip("/")
    if not leaf.is_dir() or (leaf != root and root not in leaf.parents):
        return [root]
    out = [leaf]
    while out[-1] != root:
        out.append(out[-1].parent)
    return out


def _v2_limit(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000": quota and period in microseconds
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period or 100000)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_limit(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or -1), int(period or 0)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half), the tightest of its
    ancestors'; None when there is none or it cannot be read (not Linux, no cgroup file system).

    cgroup v2: ``cpu.max`` along the path of the ``0::`` line of /proc/self/cgroup.  v1: the
    ``cpu`` controller's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under ``root/cpu`` (or
    ``root/cpu,cpuacct``)."""
    lines = (_read(proc_cgroup) or "").splitlines()
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limits += [lim for f in _ancestors(root, path) if (lim := _v2_limit(f)) is not None]
        elif "cpu" in controllers.split(","):
            mount = next((root / m for m in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / m).is_dir()), None)
            if mount is not None:
                limits += [lim for f in _ancestors(mount, path) if (lim := _v1_limit(f)) is not None]
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask; all of them where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(affinity: int | Iterable[int] | None = None, limit: float | None | str = "read") -> int:
    """CPUs this process can really use: its affinity mask, capped by the cgroup quota rounded up
    (a quota of 1.5 CPUs still lets two threads run half the time each); at least 1.

    ``affinity``: a CPU count or set (default: :func:`affinity_cpus`); ``limit``: the quota in CPUs,
    None for none (default: :func:`cgroup_cpu_limit`)."""
    if affinity is None:
        n = affinity_cpus()
    else:
        n = affinity if isinstance(affinity, int) else len(set(affinity))
    quota = cgroup_cpu_limit() if limit == "read" else limit
    if isinstance(quota, (int, float)) and quota > 0:
        n = min(n, math.ceil(quota - 1e-9))
    return max(1, n)


def choose_threads(requested: int | None, current: int, environ: Mapping[str, str] | None = None,
                   cpus: int | None = None) -> int | None:
    """The torch thread count to set, or None to leave torch's ``current`` one.

    ``requested`` (``--threads``) wins.  Otherwise a user's ``OMP_NUM_THREADS`` (which torch already
    honours) is left alone, and torch's own count is only ever *lowered*, to :func:`usable_cpus`
    (``cpus`` in tests): where nothing limits the process, torch's default stands, and so do the
    numbers computed with it; a program that chose fewer threads before calling keeps them."""
    if requested is not None and requested != 0:
        if requested < 0:
            raise ConfigError(f"argument --threads {requested}: expected a positive number of threads")
        return requested if requested != current else None
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    n = cpus if cpus is not None else usable_cpus()
    return n if n < current else None


def apply_torch_threads(requested: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Set torch's intra-op thread count as :func:`choose_threads` says; return the count in force."""
    import torch

    n = choose_threads(requested, torch.get_num_threads(), environ)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


__all__ = ["QUIET_OPENMP", "affinity_cpus", "apply_torch_threads", "cgroup_cpu_limit", "choose_threads",
           "openmp_defaults", "prepare_environment", "usable_cpus", "worker_environment"]
