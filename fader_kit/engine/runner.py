"""A grid of units planned once and run by an executor through one recorder into one store.

A :class:`Grid` is what to run: data, categories, mask sources, heads, seeds, profile.  Planning
(:meth:`GridRunner.plan`) turns it into units -- one results row each, in the order that shares
work best (category, seed, source, head) -- with the keys each head's job kind derives for them
(:mod:`fader_kit.engine.jobs`: what a unit computes is its kind's business, not the runner's).  The
serial executor (:meth:`GridRunner.run`) and the Ray executor (:mod:`fader_kit.engine.ray`)
compute every row through :meth:`GridRunner.compute_row` and write it through a
:class:`Recorder`, so both give the same rows.  Every command that evaluates models is a grid:
``fader-kit bench TABLE`` (the paper's tables, ``fader_head``, ``coverage``) and
``fader-kit evaluate`` (a grid of one category).

A unit that fails (missing weights, an unknown or broken masker, bad data) is recorded as
``failed`` with its reason and traceback, and the rest of the grid runs; ``KeyboardInterrupt``
stops the run and keeps every row that had finished.  A finished row computed with the same
settings in *another* table (table3's ``paper`` is table2's FADeR on the same masker) is copied,
not recomputed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from fader_kit.model.fader import FaderModel
from fader_kit.maskers.interfaces import Masker
from fader_kit.engine.pace import JobWork
from fader_kit.model.pipeline import environment
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.util.timing import minutes
from fader_kit.engine import unit_kinds  # noqa: F401  (registers the built-in job kinds)
from fader_kit.engine.artifacts import WorkCache
from fader_kit.engine.jobs import Grid, Head, JobKind, PlannedUnit, RowFacts, failed_facts, job_kind
from fader_kit.engine.store import ResultRow, ResultStore, UnitId
from fader_kit.engine.workbench import CategoryWorkbench, Evaluation, WorkbenchSettings

Log = Callable[[str], None]


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    computed: int = 0
    copied: int = 0
    failed: int = 0
    ear_trained: int = 0
    maskers_fitted: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


class FigureHook(Protocol):
    def __call__(self, runner: "GridRunner", pu: PlannedUnit, bench: CategoryWorkbench, ev: Evaluation
                 ) -> Path | None: ...


class MeasureHook(Protocol):
    """Extra measurements of a masker-alone unit (stored in the row's ``config``)."""

    def __call__(self, runner: "GridRunner", pu: PlannedUnit, bench: CategoryWorkbench, masker: Masker
                 ) -> dict[str, Any]: ...


def failure_reason(exc: BaseException) -> str:
    """A failed row's ``reason``: the exception's type and message on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class Recorder:
    """Writes each finished row (details first, then the row) and tells the user: progress, ETA,
    and the summary.  Both executors record through it."""

    def __init__(self, store: ResultStore, summary: RunSummary, todo: int, log: Log) -> None:
        self.store, self.summary, self.todo, self.log = store, summary, todo, log
        self.done = 0
        self.t_start = time.perf_counter()
        self.compute_seconds = 0.0

    def eta(self) -> str:
        s = self.summary
        if not s.computed or self.done >= self.todo:
            return ""
        return f", ETA ~{minutes(self.compute_seconds / s.computed * (self.todo - self.done))}"

    def record(self, pu: PlannedUnit, row: ResultRow, details: dict[str, Any], seconds: float = 0.0,
               lines: list[str] | None = None) -> None:
        """Store ``row`` (its details first), then log ``lines`` (what the unit printed) and the result."""
        for key, detail in details.items():
            self.store.details.save(key, detail)
        self.store.put(row)
        self.done += 1
        for line in lines or []:
            self.log(line)
        s = self.summary
        trained = RowFacts.of(row).trained
        s.ear_trained += int(trained.get("ear_trained", 0))
        s.maskers_fitted += int(trained.get("maskers_fitted", 0))
        if row.status == "ok" and row.reused_from:
            s.copied += 1
            self.log(f"    copied from {row.reused_from} (same settings): {_scores(row)}")
        elif row.status == "ok":
            s.computed += 1
            self.compute_seconds += seconds
            self.log(f"    done in {seconds:.1f}s: {_scores(row)}")
        else:
            s.failed += 1
            s.failures.append(f"{pu.unit.label()}: {row.reason}")
            self.log(f"    FAILED: {row.reason}")


def _scores(row: ResultRow) -> str:
    """``image 0.912 / pixel 0.874`` (a dash for a metric a job kind does not measure)."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return f"image {f(row.image_auroc)} / pixel {f(row.pixel_auroc)}"


class GridRunner:
    """Plans a grid and computes its rows; ``registry`` and ``log`` are injectable (tests, notebooks)."""

    def __init__(self, grid: Grid, *, registry: MaskerRegistry | None = None, log: Log = print,
                 figure: FigureHook | None = None, measure: MeasureHook | None = None, fail_fast: bool = False,
                 kinds: dict[str, JobKind] | None = None) -> None:
        self.grid = grid
        # resolved now: an unknown kind fails before any work, and a Ray task receives the objects
        self.kinds = dict(kinds) if kinds is not None else {h.kind: job_kind(h.kind) for h in grid.heads}
        self.fail_fast = fail_fast  # raise a unit's exception instead of recording a failed row
        self.registry = registry
        self.log = log
        self.figure = figure
        self.measure = measure
        self.out = Path(grid.out)
        self.cache = WorkCache(self.out)
        self.summary = RunSummary()
        self._failed_sources: dict[tuple[str, int, str], BaseException] = {}

    @cached_property
    def store(self) -> ResultStore:
        """Opened on first use: a Ray worker computes rows without ever touching the SQLite file."""
        return ResultStore(self.out)

    def workbench(self, category: str, seed: int) -> CategoryWorkbench:
        g = self.grid
        settings = WorkbenchSettings(data=g.data, category=category, profile=g.profile, seed=seed, device=g.device,
                                     ear_masks=g.ear_masks, synthetic=g.synthetic, data_seed=g.data_seed,
                                     progress=g.progress)
        return CategoryWorkbench(settings, self.cache, registry=self.registry, log=self.log)

    # -- planning ----------------------------------------------------------------------------
    def plan(self) -> list[PlannedUnit]:
        """Every unit of the grid, in the order that shares work best (category, seed, source, head)."""
        g = self.grid
        units = []
        for category in g.categories:
            for seed in g.seeds:
                bench = self.workbench(category, seed)
                for source in g.sources:
                    for head in g.heads:
                        unit = UnitId(table=g.table, data=g.data, profile=g.profile.name, masker=source.row_name,
                                      variant=head.name, category=category, seed=seed)
                        uk = self.kinds[head.kind].keys(bench, source, head, self)
                        units.append(PlannedUnit(unit, source, head, uk))
        return units

    def start(self, threads: str, where: str = "") -> tuple[list[PlannedUnit], Recorder]:
        """Plan, skip the units already finished with the same settings, say what will run, and
        return the rest with the recorder that writes them (every executor starts here)."""
        g = self.grid
        units = self.plan()
        todo = [u for u in units if not self.store.is_done(u.unit, u.work_key)]
        s = self.summary
        s.planned, s.skipped = len(units), len(units) - len(todo)
        self.log(f"{g.table} on {g.data} ({g.profile.name} profile, {g.profile.image_size}px, device {g.device}, "
                 f"{threads}, seed{'s' if len(g.seeds) > 1 else ''} {','.join(map(str, g.seeds))}){where}: "
                 f"{len(units)} units, {s.skipped} already finished, {len(todo)} to run -> {self.store.path}")
        return todo, Recorder(self.store, s, len(todo), self.log)

    # -- the serial executor -----------------------------------------------------------------
    def run(self) -> RunSummary:
        g, s = self.grid, self.summary
        n = torch.get_num_threads()
        todo, recorder = self.start(f"{n} thread{'s' if n != 1 else ''}")
        benches: dict[tuple[str, int], CategoryWorkbench] = {}
        if todo:
            self.announce_pace(todo, benches)
        for i, pu in enumerate(todo, 1):
            wkey = (pu.unit.category, pu.unit.seed)
            bench = benches.get(wkey)
            if bench is None:
                benches.clear()  # one category's images and U-Net in memory at a time
                bench = benches[wkey] = self.workbench(*wkey)
            self.log(f"[{i}/{len(todo)}] {pu.unit.masker}/{pu.unit.variant} on {pu.unit.category} "
                     f"(seed {pu.unit.seed}){recorder.eta()}")
            t0 = time.perf_counter()
            copied = self.copied_row(pu)
            row, details = (copied, {}) if copied is not None else self.compute_row(pu, bench)
            recorder.record(pu, row, details, time.perf_counter() - t0)
        s.seconds = time.perf_counter() - recorder.t_start
        self.log(f"{g.table}: {s.computed} computed, {s.copied} copied, {s.skipped} skipped, {s.failed} failed "
                 f"in {minutes(s.seconds)} (EAR U-Nets trained: {s.ear_trained}, maskers fitted: {s.maskers_fitted})")
        return s

    # -- before the long work ----------------------------------------------------------------
    def pace_work(self, todo: list[PlannedUnit], n_train: int, n_test: int) -> JobWork:
        """What ``todo`` still computes, as :mod:`fader_kit.engine.pace` counts it: the EAR U-Nets not in the
        cache, the FADeR heads and the models to score (rows copied from another table cost nothing)."""
        units = [pu for pu in todo if self.kinds[pu.head.kind].scores_model(pu)
                 and self.store.find_ok(pu.work_key) is None]
        ears = {pu.keys.ear for pu in units if not self.cache.ear_path(pu.keys.ear).is_file()}
        return JobWork(ear_trainings=len(ears), fader_trainings=sum(pu.head.config is not None for pu in units),
                       scored_models=len(units), n_train=n_train, n_test=n_test)

    def announce_pace(self, todo: list[PlannedUnit], benches: dict[tuple[str, int], CategoryWorkbench]) -> None:
        """Before a long job: time a few EAR training steps, log the expected duration, and a line
        when this machine is far slower than the reference (:mod:`fader_kit.engine.pace`).  Every category
        is taken to be the size of the first, whose images are loaded now (the run needs them next).
        The estimate never stops a job: a failure here (bad data, say) is the first unit's to report."""
        from fader_kit.engine import pace

        g = self.grid
        try:
            first = (todo[0].unit.category, todo[0].unit.seed)
            split = benches.setdefault(first, self.workbench(*first)).split()
            pace.announce(self.pace_work(todo, int(split.train.shape[0]), int(split.test.shape[0])), g.profile,
                          g.device, self.log)
        except KeyboardInterrupt:
            raise
        except Exception:  # the unit that needs the same thing reports it
            return

    # -- rows --------------------------------------------------------------------------------
    def copied_row(self, pu: PlannedUnit) -> ResultRow | None:
        """The row of another table computed with exactly this unit's settings, relabelled; None if there is none."""
        same = self.store.find_ok(pu.work_key)
        if same is not None and same.unit != pu.unit:
            return same.model_copy(update={"unit": pu.unit, "reused_from": same.unit.label(), "finished_at": None})
        return None

    def compute_row(self, pu: PlannedUnit, bench: CategoryWorkbench) -> tuple[ResultRow, dict[str, Any]]:
        """One unit's row and the score details to keep beside it, computed in this process.  Every
        executor goes through it, so they give the same rows."""
        try:
            return self.kinds[pu.head.kind].compute(self, pu, bench)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, and the rest of the grid goes on
            if self.fail_fast:
                raise
            return self.failed_row(pu, exc), {}

    def failed_row(self, pu: PlannedUnit, exc: BaseException | str) -> ResultRow:
        reason = exc if isinstance(exc, str) else failure_reason(exc)
        return ResultRow(**self.row_base(pu), status="failed", reason=reason, config=failed_facts(pu, exc))

    def row_base(self, pu: PlannedUnit) -> dict[str, Any]:
        env = {**environment(), "threads": str(torch.get_num_threads())}
        return {"unit": pu.unit, "work_key": pu.work_key, "device": str(self.grid.device), "environment": env}

    def prepare_masks(self, pu: PlannedUnit, bench: CategoryWorkbench) -> None:
        """Make sure ``pu``'s masks exist.  A failure (missing weights, say) is remembered so that the
        source's other heads fail with the same reason at once instead of retrying."""
        mem_key = (pu.unit.category, pu.unit.seed, pu.unit.masker)
        if mem_key in self._failed_sources:
            raise self._failed_sources[mem_key]
        try:
            bench.masks(pu.source)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._failed_sources[mem_key] = exc
            raise

    def ear_model(self, pu: PlannedUnit, bench: CategoryWorkbench) -> FaderModel:
        """Plain EAR on ``pu``'s U-Net (what a figure shows beside FADeR)."""
        unet, _ = bench.unet(pu.source)
        return FaderModel(unet, None, self.grid.profile.fader_head, head=None)


def run_grid(grid: Grid, *, registry: MaskerRegistry | None = None, log: Log = print,
             figure: FigureHook | None = None, measure: MeasureHook | None = None) -> RunSummary:
    """Plan and run ``grid`` serially."""
    return GridRunner(grid, registry=registry, log=log, figure=figure, measure=measure).run()


__all__ = ["Grid", "GridRunner", "Head", "JobKind", "PlannedUnit", "Recorder", "RunSummary", "failure_reason", "minutes",
           "run_grid"]
