"""``fader-kit bench TABLE --executor ray``: a table's units as a graph of Ray tasks.

The graph mirrors the work the serial runner shares (:mod:`fader_kit_bench.runner`):

- per (data, category, profile, seed) and masker, one **masks** task: fit the masker and mask the
  train and test images;
- per EAR key, one **EAR** task: train the U-Net (on blobs, so it starts at once; with
  ``--ear-masks masker`` it waits for its masker's masks task);
- per (masker, variant), one **unit** task: FADeR training (none for plain EAR) and scoring; it
  waits for its masks and EAR tasks and returns the results row.

Shared results travel through the **cache directory** (``<out>/cache``), not the object store.
Tasks return only a small status (ok or the failure's reason, whether they trained or loaded)
and the rows.  Why: every artifact is already written atomically under a digest of its settings
(:mod:`fader_kit.cache`), so a retried task, a later run and the serial executor all reuse it
-- a run interrupted on Ray resumes serially and vice versa -- while the object store lives
only as long as the cluster, and would copy each category's U-Net and masks to every worker
that needs them.  The cost: on a cluster, ``--out`` must be a folder every node mounts at the
same path (NFS, Lustre, a cloud file system).  One task runs per key, so two workers never
write the same cache file.

Every task computes through the same :class:`~fader_kit_bench.runner.BenchRunner` methods as the
serial loop (``compute_row`` for a unit), so both executors give the same rows: same numbers,
same seeds.  The driver alone writes the SQLite store, one row the moment its unit task
finishes, so a rerun resumes exactly as it does after a serial run.

Faults: a task whose worker process dies (killed, out of memory, a lost node) is retried by Ray
up to ``max_retries`` times and its row is written once, when it finishes; a unit that raises is
a ``failed`` row with its reason and the grid goes on (a failed masks or EAR task fails its units
with its reason, once, as the serial runner remembers a failed masker); Ctrl-C cancels what is
still running and keeps every row already written.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from fader_kit.errors import UserError
from fader_kit.pipeline import CategoryWorkbench
from fader_kit.registry import MaskerRegistry

from .runner import BenchConfig, BenchRunner, PlannedUnit, RunSummary, _minutes, failure_reason
from .store import ResultRow

Log = Callable[[str], None]
INSTALL_HINT = "pip install 'fader-kit[ray]'"
# Environment variables forwarded to the tasks when this executor starts or joins Ray itself
# (a cluster's workers do not inherit the driver's shell): weights folder, data cache, switches.
FORWARDED_ENV_PREFIX = "FADER_KIT_"


class RayNotInstalledError(UserError, ValueError):
    """``--executor ray`` without the ``[ray]`` extra."""


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(
            f"argument --executor ray: Ray is not installed; install the extra: {INSTALL_HINT}") from None
    return ray


class RayOptions(BaseModel):
    """Where the tasks run and what each one reserves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(None, description="join this Ray cluster (e.g. 'auto' or 'ray://head:10001'); "
                                                  "None = start Ray locally (or use the session already initialised)")
    cpus_per_unit: float = Field(1.0, gt=0, description="CPUs each task reserves")
    gpus_per_unit: float = Field(0.0, ge=0, description="GPUs each task reserves (0.5 = two tasks share one GPU)")
    threads: int | None = Field(None, ge=1, description="torch threads per task (default: cpus_per_unit, at least 1)")
    max_retries: int = Field(3, ge=0, description="reruns of a task whose worker process died")

    def task_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_unit))


def task_device(device: str, options: RayOptions) -> str:
    """The ``--device`` the tasks use.  Ray gives each task its own GPUs (``CUDA_VISIBLE_DEVICES``),
    so a task says ``cuda``, never ``cuda:N``, and a CUDA task must reserve a GPU."""
    text = (device or "cpu").strip().lower()
    if text == "auto":
        return "cuda" if options.gpus_per_unit > 0 else "cpu"
    if text.startswith("cuda:"):
        raise ValueError(f"argument --device={device}: with --executor ray use --device cuda; each task runs on "
                         "the GPU(s) Ray assigns it (--gpus-per-unit)")
    if text == "cuda" and options.gpus_per_unit <= 0:
        raise ValueError("argument --device=cuda with --executor ray needs --gpus-per-unit > 0 (e.g. 1, or 0.5 for "
                         "two units per GPU)")
    if text == "cpu" and options.gpus_per_unit > 0:
        raise ValueError(f"argument --gpus-per-unit={options.gpus_per_unit:g} reserves GPUs, but --device is cpu; "
                         "add --device cuda")
    if text not in ("cpu", "cuda"):
        raise ValueError(f"argument --device={device!r}: expected cpu, cuda or auto")
    return text


def portable_registry(registry: MaskerRegistry | None) -> MaskerRegistry | None:
    """The driver's registry as a task rebuilds it.  None: each worker loads the installed plugins
    from package metadata (install the same environment on every node).  A registry built in
    the driver (a notebook, a test) travels unloaded -- its entry points and extra plugin objects,
    cloudpickled with the task: classes defined in ``__main__`` travel by value, others by module
    name, so their module must be importable on the workers (or registered with
    ``ray.cloudpickle.register_pickle_by_value``)."""
    if registry is None:
        return None
    return MaskerRegistry(entry_points=None if registry.entry_points is None else list(registry.entry_points),
                          extra_plugins=list(registry.extra_plugins),
                          env=None if registry.env is None else dict(registry.env))


# -- what runs in the workers ---------------------------------------------------------------------
@dataclass(frozen=True)
class TaskContext:
    """Shared by every task of a run (put in the object store once)."""

    config: BenchConfig
    registry: MaskerRegistry | None  # unloaded (portable_registry); None = the installed plugins
    threads: int

    def runner(self, log: Log) -> BenchRunner:
        torch.set_num_threads(self.threads)  # a reused worker may have run a task of another shape
        # a fresh unloaded copy per task: plugins load in this worker, never shared between tasks
        return BenchRunner(self.config, registry=portable_registry(self.registry), log=log)


@dataclass
class StageResult:
    """What a masks or EAR task tells the driver; the artifact itself is in the cache."""

    kind: str  # "masker" or "ear_train": the timing it adds to the first row that uses it
    key: str
    ok: bool
    reason: str | None = None
    trained: bool = False  # fitted / trained by this task, not loaded from the cache
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)


def _workbench(runner: BenchRunner, pu: PlannedUnit) -> CategoryWorkbench:
    return CategoryWorkbench(runner.workbench_settings(pu.unit.category, pu.unit.seed), runner.cache, log=runner.log)


def masks_task(ctx: TaskContext, pu: PlannedUnit) -> StageResult:
    """Fit ``pu``'s masker and mask the images (or find them in the cache)."""
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    try:
        masks, fitted = runner._get_masks(pu, _workbench(runner, pu))
    except Exception as exc:  # its units fail with this reason, once each
        return StageResult("masker", pu.masker_key, False, failure_reason(exc), log=lines)
    return StageResult("masker", pu.masker_key, True, trained=fitted, seconds=masks.seconds if fitted else 0.0,
                       log=lines)


def ear_task(ctx: TaskContext, pu: PlannedUnit, masks: StageResult | None) -> StageResult:
    """Train ``pu``'s EAR U-Net (or find it in the cache).  ``masks`` is its masker's masks task when
    the U-Net learns from them (``--ear-masks masker``), else None."""
    if masks is not None and not masks.ok:
        return StageResult("ear_train", pu.ear_key, False, masks.reason)
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    try:
        cat = _workbench(runner, pu)
        mask_set = runner._get_masks(pu, cat)[0] if masks is not None else None
        # CategoryWorkbench.unet reads the masks only when the U-Net is trained on them
        _, info = cat.unet(pu.ear_key, mask_set)  # type: ignore[arg-type]
    except Exception as exc:
        return StageResult("ear_train", pu.ear_key, False, failure_reason(exc), log=lines)
    return StageResult("ear_train", pu.ear_key, True, trained=not info["reused"],
                       seconds=0.0 if info["reused"] else float(info.get("seconds", 0.0)), log=lines)


def unit_task(ctx: TaskContext, pu: PlannedUnit, masks: StageResult, ear: StageResult
              ) -> tuple[ResultRow, list[str], tuple[StageResult, StageResult]]:
    """One results row, through :meth:`BenchRunner.compute_row` (the serial runner's own code)."""
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    for stage in (masks, ear):  # the order in which the serial runner meets them
        if not stage.ok:
            return runner.failed_row(pu, stage.reason or "failed"), lines, (masks, ear)
    return runner.compute_row(pu, _workbench(runner, pu)), lines, (masks, ear)


# -- the driver -------------------------------------------------------------------------------------
class RayExecutor:
    """Runs one table on Ray; the same inputs as :class:`BenchRunner` plus :class:`RayOptions`."""

    def __init__(self, config: BenchConfig, options: RayOptions | None = None, *,
                 registry: MaskerRegistry | None = None, log: Log = print) -> None:
        import_ray()  # before any work: one clear line when the extra is missing
        self.options = options or RayOptions()
        device = task_device(config.device, self.options)
        # tasks: no progress bars (many workers' bars would interleave)
        self.task_config = config.model_copy(update={"device": device, "progress": False})
        # the driver plans (keys do not depend on the device) and writes the store; it needs no GPU
        self.planner = BenchRunner(config.model_copy(update={"device": "cpu"}), registry=registry, log=log)
        self.registry = registry
        self.log = log
        self.startup_seconds: float | None = None

    def run(self) -> RunSummary:
        ray = import_ray()
        started = self._connect(ray)
        try:
            return self._run(ray)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Start or join Ray (True: this executor started the session and shuts it down)."""
        if ray.is_initialized():
            return False
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        t0 = time.perf_counter()
        ray.init(address=self.options.address, runtime_env={"env_vars": env} if env else None,
                 logging_level=logging.WARNING)
        self.startup_seconds = time.perf_counter() - t0
        return True

    def _check_resources(self, ray: Any) -> str:
        have = ray.cluster_resources()
        o = self.options
        short = [f"--{name}-per-unit={want:g} but the Ray cluster has {have.get(res, 0):g} {res}(s)"
                 for name, res, want in (("cpus", "CPU", o.cpus_per_unit), ("gpus", "GPU", o.gpus_per_unit))
                 if want > have.get(res, 0)]
        if short and o.address is None:  # a local Ray never grows: the tasks would wait forever
            raise ValueError("argument " + "; ".join(short))
        for line in short:  # a cluster may autoscale
            self.log(f"warning: {line} now; the tasks wait until the cluster provides them")
        return f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"

    def _run(self, ray: Any) -> RunSummary:
        t_start = time.perf_counter()
        p, o, cfg = self.planner, self.options, self.task_config
        resources = self._check_resources(ray)
        units = p.plan()
        todo = [u for u in units if not p.store.is_done(u.unit, u.work_key)]
        s = p.summary
        s.planned, s.skipped = len(units), len(units) - len(todo)
        where = (f"Ray at {o.address}" if o.address else "local Ray") + f" ({resources}"
        where += f"; started in {self.startup_seconds:.1f}s)" if self.startup_seconds is not None else ")"
        self.log(f"{p.spec.name} on {cfg.data} ({p.profile.name} profile, {p.profile.image_size}px, device {cfg.device}, "
                 f"seeds {','.join(map(str, cfg.seeds))}) on {where}, {o.cpus_per_unit:g} CPU / {o.gpus_per_unit:g} GPU "
                 f"per unit: {len(units)} units, {s.skipped} already finished, {len(todo)} to run -> {p.store.path}")
        done = 0

        def record(pu: PlannedUnit, row: ResultRow, note: str) -> None:
            nonlocal done
            p.store.put(row)  # the driver alone writes the store, one row at a time
            done += 1
            eta = ""
            if s.computed and done < len(todo):
                elapsed = time.perf_counter() - t_start
                eta = f", ETA ~{_minutes(elapsed / done * (len(todo) - done))}"
            head = f"[{done}/{len(todo)}] {pu.unit.masker}/{pu.unit.variant} on {pu.unit.category} (seed {pu.unit.seed})"
            if row.status == "ok":
                self.log(f"{head}: {note}: image {row.image_auroc:.3f} / pixel {row.pixel_auroc:.3f}{eta}")
            else:
                s.failed += 1
                s.failures.append(f"{pu.unit.label()}: {row.reason}")
                self.log(f"{head}: FAILED: {row.reason}{eta}")

        to_compute = []
        for pu in todo:  # same settings finished in another table: copied here, no task
            copied = p.copied_row(pu)
            if copied is None:
                to_compute.append(pu)
            else:
                s.copied += 1
                record(pu, copied, f"copied from {copied.reused_from} (same settings)")

        ctx = ray.put(TaskContext(cfg, portable_registry(self.registry), o.task_threads()))  # unloaded: small, picklable
        opts = dict(num_cpus=o.cpus_per_unit, num_gpus=o.gpus_per_unit, max_retries=o.max_retries,
                    retry_exceptions=False)
        masks_remote = ray.remote(masks_task).options(**opts)
        ear_remote = ray.remote(ear_task).options(**opts)
        unit_remote = ray.remote(unit_task).options(**opts)
        stages: dict[str, Any] = {}
        pending: dict[Any, PlannedUnit] = {}
        for pu in to_compute:
            if pu.masker_key not in stages:
                stages[pu.masker_key] = masks_remote.remote(ctx, pu)
            masks_ref = stages[pu.masker_key]
            if pu.ear_key not in stages:
                stages[pu.ear_key] = ear_remote.remote(ctx, pu, masks_ref if cfg.ear_masks == "masker" else None)
            pending[unit_remote.remote(ctx, pu, masks_ref, stages[pu.ear_key])] = pu

        seen: set[str] = set()
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                pu = pending.pop(ref)
                try:
                    row, lines, used = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries spent (or a task the unit waited for died)
                    row, lines, used = p.failed_row(pu, ray_failure_reason(exc)), [], ()
                    row = row.model_copy(update={"device": cfg.device})
                for stage in used:  # shared work: logged, counted and timed with the first row that used it
                    if stage.key in seen:
                        continue
                    seen.add(stage.key)
                    for line in stage.log:
                        self.log(line)
                    if stage.trained:
                        if stage.kind == "masker":
                            s.maskers_fitted += 1
                        else:
                            s.ear_trained += 1
                        if row.status == "ok":
                            row.timings[stage.kind] = row.timings.get(stage.kind, 0.0) + stage.seconds
                for line in lines:
                    self.log(line)
                if row.status == "ok":
                    s.computed += 1
                    record(pu, row, f"done in {sum(row.timings.values()):.1f}s of work")
                else:
                    record(pu, row, "")
        except KeyboardInterrupt:
            for r in [*pending, *stages.values()]:
                try:
                    ray.cancel(r, force=True)
                except Exception:  # already finished, or the session is going down: nothing left to stop
                    pass
            self.log(f"interrupted: {done} rows written this run are kept; {len(pending)} units cancelled")
            raise
        s.seconds = time.perf_counter() - t_start
        self.log(f"{p.spec.name}: {s.computed} computed, {s.copied} copied, {s.skipped} skipped, {s.failed} failed "
                 f"in {_minutes(s.seconds)} on Ray (EAR U-Nets trained: {s.ear_trained}, maskers fitted: "
                 f"{s.maskers_fitted})")
        return s


def ray_failure_reason(exc: BaseException) -> str:
    """A failed row's reason for an error Ray raised: the innermost exception (the task's own, a
    worker that died more often than ``max_retries``, an argument the worker could not unpickle),
    its first line only -- Ray appends the remote traceback to the message."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause  # type: ignore[attr-defined]
    first = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    reason = f"{type(exc).__name__}: {first}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def run_table_ray(config: BenchConfig, options: RayOptions | None = None, *, registry: MaskerRegistry | None = None,
                  log: Log = print) -> RunSummary:
    """Plan one table and run its units as Ray tasks (``fader-kit bench TABLE --executor ray``)."""
    return RayExecutor(config, options, registry=registry, log=log).run()
