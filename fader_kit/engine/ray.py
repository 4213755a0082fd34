"""The Ray executor: a grid's units as a graph of Ray tasks (``--executor ray``).

The graph mirrors the work the serial executor shares (:mod:`fader_kit.engine.runner`):

- per (data, category, profile, seed) and masker, one **masks** task: fit the masker and mask the
  train and test images;
- per EAR key, one **EAR** task: train the U-Net (on blobs, so it starts at once; with
  ``--ear-masks masker`` it waits for its masker's masks task);
- per (masker, variant), one **unit** task: FADeR training (none for plain EAR) and scoring; it
  waits for its masks and EAR tasks and returns the results row.

Shared results travel through the **cache directory** (``<out>/cache``), not the object store.
Tasks return only a small status (ok or the failure's reason, whether they trained or loaded)
and the rows.  Why: every artifact is already written atomically under a digest of its settings
(:mod:`fader_kit.engine.keys`), so a retried task, a later run and the serial executor all reuse it
-- a run interrupted on Ray resumes serially and vice versa -- while the object store lives
only as long as the cluster, and would copy each category's U-Net and masks to every worker
that needs them.  The cost: on a cluster, ``--out`` must be a folder every node mounts at the
same path (NFS, Lustre, a cloud file system).  One task runs per key, so two workers never
write the same cache file.

Every task computes through the same :class:`~fader_kit.engine.runner.GridRunner` methods as the
serial loop (``compute_row`` for a unit), so both executors give the same rows: same numbers,
same seeds.  The driver alone writes the results folder, through the same
:class:`~fader_kit.engine.runner.Recorder`, one row the moment its unit task finishes, so a rerun
resumes exactly as it does after a serial run.  Numbers depend on the torch thread count: a task
runs with ``--cpus-per-unit`` threads, the serial executor with torch's default, and every row
records its count.

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

from fader_kit.errors import ConfigError, UserError
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.util.threads import worker_environment
from fader_kit.util.timing import minutes
from fader_kit.engine.jobs import JobKind, RowFacts
from fader_kit.engine.runner import FigureHook, Grid, GridRunner, MeasureHook, PlannedUnit, Recorder, RunSummary, failure_reason
from fader_kit.engine.store import ResultRow

Log = Callable[[str], None]
INSTALL_HINT = "pip install 'fader-kit[ray]'"
# Environment variables forwarded to the tasks when this executor starts or joins Ray itself
# (a cluster's workers do not inherit the driver's shell): weights folder, data cache, switches;
# and the OpenMP wait policy of fader_kit.util.threads (the user's, or PASSIVE).
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
        raise ConfigError(f"argument --device={device}: with --executor ray use --device cuda; each task runs on "
                         "the GPU(s) Ray assigns it (--gpus-per-unit)")
    if text == "cuda" and options.gpus_per_unit <= 0:
        raise ConfigError("argument --device=cuda with --executor ray needs --gpus-per-unit > 0 (e.g. 1, or 0.5 for "
                         "two units per GPU)")
    if text == "cpu" and options.gpus_per_unit > 0:
        raise ConfigError(f"argument --gpus-per-unit={options.gpus_per_unit:g} reserves GPUs, but --device is cpu; "
                         "add --device cuda")
    if text not in ("cpu", "cuda"):
        raise ConfigError(f"argument --device={device!r}: expected cpu, cuda or auto")
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

    grid: Grid
    registry: MaskerRegistry | None  # unloaded (portable_registry); None = the installed plugins
    threads: int
    figure: FigureHook | None = None
    measure: MeasureHook | None = None
    kinds: dict[str, JobKind] = field(default_factory=dict)  # the grid's job kinds, resolved by the driver

    def runner(self, log: Log) -> GridRunner:
        torch.set_num_threads(self.threads)  # a reused worker may have run a task of another shape
        # a fresh unloaded copy per task: plugins load in this worker, never shared between tasks
        return GridRunner(self.grid, registry=portable_registry(self.registry), log=log, figure=self.figure,
                          measure=self.measure, kinds=self.kinds or None)


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


def masks_task(ctx: TaskContext, pu: PlannedUnit) -> StageResult:
    """Fit ``pu``'s masker and mask the images (or find them in the cache)."""
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    bench = runner.workbench(pu.unit.category, pu.unit.seed)
    try:
        runner.prepare_masks(pu, bench)
    except Exception as exc:  # its units fail with this reason, once each
        return StageResult("masker", pu.keys.masks, False, failure_reason(exc), log=lines)
    timings, trained = bench.take_work_done()
    return StageResult("masker", pu.keys.masks, True, trained=bool(trained["maskers_fitted"]),
                       seconds=timings.get("masker", 0.0), log=lines)


def ear_task(ctx: TaskContext, pu: PlannedUnit, masks: StageResult | None) -> StageResult:
    """Train ``pu``'s EAR U-Net (or find it in the cache).  ``masks`` is its masker's masks task when
    the U-Net learns from them (``--ear-masks masker``), else None."""
    if masks is not None and not masks.ok:
        return StageResult("ear_train", pu.keys.ear, False, masks.reason)
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    bench = runner.workbench(pu.unit.category, pu.unit.seed)
    try:
        bench.unet(pu.source)
    except Exception as exc:
        return StageResult("ear_train", pu.keys.ear, False, failure_reason(exc), log=lines)
    timings, trained = bench.take_work_done()
    return StageResult("ear_train", pu.keys.ear, True, trained=bool(trained["ear_trained"]),
                       seconds=timings.get("ear_train", 0.0), log=lines)


def unit_task(ctx: TaskContext, pu: PlannedUnit, masks: StageResult, ear: StageResult
              ) -> tuple[ResultRow, dict[str, Any], list[str], tuple[StageResult, StageResult]]:
    """One results row and its details, through :meth:`GridRunner.compute_row` (the serial code)."""
    lines: list[str] = []
    runner = ctx.runner(lines.append)
    for stage in (masks, ear):  # the order in which the serial runner meets them
        if not stage.ok:
            return runner.failed_row(pu, stage.reason or "failed"), {}, lines, (masks, ear)
    row, details = runner.compute_row(pu, runner.workbench(pu.unit.category, pu.unit.seed))
    return row, details, lines, (masks, ear)


# -- the driver -------------------------------------------------------------------------------------
class RayExecutor:
    """Runs one grid on Ray; the same inputs as :class:`GridRunner` plus :class:`RayOptions`."""

    def __init__(self, grid: Grid, options: RayOptions | None = None, *, registry: MaskerRegistry | None = None,
                 log: Log = print, figure: FigureHook | None = None, measure: MeasureHook | None = None) -> None:
        import_ray()  # before any work: one clear line when the extra is missing
        self.options = options or RayOptions()
        device = task_device(grid.device, self.options)
        # tasks: no progress bars (many workers' bars would interleave)
        self.task_grid = grid.model_copy(update={"device": device, "progress": False})
        # the driver plans (keys do not depend on the device) and writes the store; it needs no GPU
        self.planner = GridRunner(grid.model_copy(update={"device": "cpu"}), registry=registry, log=log)
        self.registry = registry
        self.figure = figure
        self.measure = measure
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
        env.update(worker_environment())  # workers' OpenMP threads sleep when idle, as the driver's
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
            raise ConfigError("argument " + "; ".join(short))
        for line in short:  # a cluster may autoscale
            self.log(f"warning: {line} now; the tasks wait until the cluster provides them")
        return f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"

    def _run(self, ray: Any) -> RunSummary:
        p, o, g = self.planner, self.options, self.task_grid
        resources = self._check_resources(ray)
        s = p.summary
        where = (f"Ray at {o.address}" if o.address else "local Ray") + f" ({resources}"
        where += f"; started in {self.startup_seconds:.1f}s)" if self.startup_seconds is not None else ")"
        threads = o.task_threads()
        todo, recorder = p.start(f"{threads} thread{'s' if threads != 1 else ''} per unit",
                                 f" on {where}, {o.cpus_per_unit:g} CPU / {o.gpus_per_unit:g} GPU per unit")
        to_compute = []
        for pu in todo:  # same settings finished in another table: copied here, no task
            copied = p.copied_row(pu)
            if copied is None:
                to_compute.append(pu)
            else:
                recorder.record(pu, copied, {}, lines=[f"[{recorder.done + 1}/{len(todo)}] {pu.unit.masker}/"
                                                       f"{pu.unit.variant} on {pu.unit.category} (seed {pu.unit.seed})"])
        stages, pending = self._submit(ray, to_compute, threads)
        try:
            self._collect(ray, pending, recorder, len(todo))
        except KeyboardInterrupt:
            for r in [*pending, *stages.values()]:
                try:
                    ray.cancel(r, force=True)
                except Exception:  # already finished, or the session is going down: nothing left to stop
                    pass
            self.log(f"interrupted: {recorder.done} rows written this run are kept; {len(pending)} units cancelled")
            raise
        s.seconds = time.perf_counter() - recorder.t_start
        self.log(f"{g.table}: {s.computed} computed, {s.copied} copied, {s.skipped} skipped, {s.failed} failed "
                 f"in {minutes(s.seconds)} on Ray (EAR U-Nets trained: {s.ear_trained}, maskers fitted: "
                 f"{s.maskers_fitted})")
        return s

    def _submit(self, ray: Any, to_compute: list[PlannedUnit], threads: int
                ) -> tuple[dict[str, Any], dict[Any, PlannedUnit]]:
        """The task graph: one masks task per masks key, one EAR task per EAR key (for the kinds that
        need a U-Net), one unit task per unit; returns the stage refs and the pending unit refs."""
        p, o, g = self.planner, self.options, self.task_grid
        ctx = ray.put(TaskContext(g, portable_registry(self.registry), threads, self.figure, self.measure, p.kinds))
        opts = dict(num_cpus=o.cpus_per_unit, num_gpus=o.gpus_per_unit, max_retries=o.max_retries,
                    retry_exceptions=False)
        masks_remote = ray.remote(masks_task).options(**opts)
        ear_remote = ray.remote(ear_task).options(**opts)
        unit_remote = ray.remote(unit_task).options(**opts)
        stages: dict[str, Any] = {}
        pending: dict[Any, PlannedUnit] = {}
        for pu in to_compute:
            kind = p.kinds[pu.head.kind]
            if not kind.needs_masks:  # the unit fits its masker (and U-Net) itself
                pending[unit_remote.remote(ctx, pu, StageResult("masker", "", True),
                                           StageResult("ear_train", "", True))] = pu
                continue
            if pu.keys.masks not in stages:
                stages[pu.keys.masks] = masks_remote.remote(ctx, pu)
            masks_ref = stages[pu.keys.masks]
            if not kind.needs_unet:  # the masker alone: no U-Net to wait for
                pending[unit_remote.remote(ctx, pu, masks_ref, StageResult("ear_train", "", True))] = pu
                continue
            if pu.keys.ear not in stages:
                stages[pu.keys.ear] = ear_remote.remote(ctx, pu, masks_ref if g.ear_masks == "masker" else None)
            pending[unit_remote.remote(ctx, pu, masks_ref, stages[pu.keys.ear])] = pu
        return stages, pending

    def _collect(self, ray: Any, pending: dict[Any, PlannedUnit], recorder: Recorder, n_todo: int) -> None:
        """Record each unit's row the moment its task finishes (``pending`` shrinks as they do)."""
        p, g = self.planner, self.task_grid
        seen: set[str] = set()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            pu = pending.pop(ref)
            try:
                row, details, lines, used = ray.get(ref)
            except ray.exceptions.RayError as exc:  # retries spent (or a task the unit waited for died)
                row, details, lines, used = p.failed_row(pu, ray_failure_reason(exc)), {}, [], ()
                row = row.model_copy(update={"device": g.device})
            trained = dict(RowFacts.of(row).trained)
            out = [f"[{recorder.done + 1}/{n_todo}] {pu.unit.masker}/{pu.unit.variant} on "
                   f"{pu.unit.category} (seed {pu.unit.seed}){recorder.eta()}"]
            for stage in used:  # shared work: logged, counted and timed with the first row that used it
                if stage.key in seen:
                    continue
                seen.add(stage.key)
                out += stage.log
                if stage.trained and row.status == "ok":
                    name = "maskers_fitted" if stage.kind == "masker" else "ear_trained"
                    trained[name] = trained.get(name, 0) + 1
                    row.timings[stage.kind] = row.timings.get(stage.kind, 0.0) + stage.seconds
            if row.status == "ok":
                row.config["trained"] = trained
            recorder.record(pu, row, details, sum(row.timings.values()), lines=out + lines)


def ray_failure_reason(exc: BaseException) -> str:
    """A failed row's reason for an error Ray raised: the innermost exception (the task's own, a
    worker that died more often than ``max_retries``, an argument the worker could not unpickle),
    its first line only -- Ray appends the remote traceback to the message."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause  # type: ignore[attr-defined]
    first = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    reason = f"{type(exc).__name__}: {first}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def run_grid_ray(grid: Grid, options: RayOptions | None = None, *, registry: MaskerRegistry | None = None,
                 log: Log = print, figure: FigureHook | None = None, measure: MeasureHook | None = None
                 ) -> RunSummary:
    """Plan ``grid`` and run its units as Ray tasks."""
    return RayExecutor(grid, options, registry=registry, log=log, figure=figure, measure=measure).run()
