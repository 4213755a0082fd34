"""The benchmark runner: plan the units of a table, skip the finished ones, run the rest.

Work is shared, never repeated: per (data, category, profile, seed) one EAR U-Net (random-blob
training, so it serves every masker and variant); per masker one fit and one set of binary
masks; per (masker, variant) one FADeR training.  All of them go through
:class:`fader_kit.pipeline.CategoryWorkbench` -- the same orchestrator as ``fader-kit evaluate``
-- and are cached under ``<out>/cache`` by configuration digests (see :mod:`fader_kit.cache`).
Seeds (``--seeds 0,1,2``) are units of their own; the report pairs them (see
:mod:`fader_kit.stats`).

A unit that fails (missing weights, an unknown or broken masker, bad data) is recorded as
``failed`` with its reason and the rest of the table runs; ``KeyboardInterrupt`` stops the run and
keeps every row that had finished.  A finished row computed with the same settings in *another*
table (table3's "ours" is table2's FADeR on the same masker) is copied, not recomputed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from fader_kit import cache as keys
from fader_kit import pipeline
from fader_kit.cache import WorkCache
from fader_kit.config import Profile, get_profile
from fader_kit.data import SyntheticConfig, list_categories
from fader_kit.devices import resolve_device
from fader_kit.fader import FaderModel
from fader_kit.interfaces import Masker
from fader_kit.pipeline import CategoryWorkbench, WorkbenchSettings
from fader_kit.registry import MaskerRegistry, UnknownMaskerError, default_registry

from .store import ResultRow, ResultStore, UnitId
from .tables import TableSpec, Variant, get_table

Log = Callable[[str], None]


class BenchConfig(BaseModel):
    """One ``fader-kit bench TABLE`` invocation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    out: Path
    data: str = "synthetic"
    categories: tuple[str, ...] | None = Field(None, description="None = every category of the data")
    maskers: tuple[str, ...] | None = Field(None, description="None = the table's maskers")
    variants: tuple[str, ...] | None = Field(None, description="None = every variant of the table")
    profile: str = "cpu"
    device: str = "cpu"
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="training seeds; each is a unit of its own")
    masker_options: dict[str, Any] = Field(default_factory=dict)
    figures: int = Field(2, ge=0, description="anomalous test images per figure panel (0 = no panels)")
    synthetic: SyntheticConfig | None = Field(None, description="override the synthetic generator's counts")
    ear_masks: Literal["blobs", "masker"] = Field(
        "blobs", description="train the EAR U-Net on random blobs only (one U-Net per category, shared by every "
        "masker) or on each masker's masks united with blobs (one U-Net per category and masker, as "
        "`fader-kit evaluate` does by default)")
    progress: bool = False


@dataclass
class PlannedUnit:
    unit: UnitId
    variant: Variant
    work_key: str
    masker_key: str
    ear_key: str


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


class BenchRunner:
    """Runs one table; ``registry`` and ``log`` are injectable (tests, notebooks)."""

    def __init__(self, config: BenchConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> None:
        self.config = config
        self.spec: TableSpec = get_table(config.table)
        self.profile: Profile = get_profile(config.profile)
        self.device = resolve_device(config.device)
        self.registry = registry or default_registry()
        self.log = log
        self.out = Path(config.out)
        self.cache = WorkCache(self.out)
        self.data_key = keys.data_key(config.data, config.synthetic)
        self.summary = RunSummary()
        self._failed_maskers: dict[tuple[str, int, str], BaseException] = {}

    @cached_property
    def store(self) -> ResultStore:
        """Opened on first use: a Ray worker computes rows without ever touching the SQLite file."""
        return ResultStore(self.out)

    # -- planning ----------------------------------------------------------------------------
    def categories(self) -> list[str]:
        available = list_categories(self.config.data)
        if self.config.categories is None:
            return available
        unknown = [c for c in self.config.categories if c not in available]
        if unknown:
            raise ValueError(f"argument --categories: {', '.join(unknown)} not in {self.config.data} "
                             f"(available: {', '.join(available)})")
        return list(self.config.categories)

    def maskers(self) -> list[str]:
        if self.config.maskers is None:
            return list(self.spec.maskers)
        known = {e.name for e in self.registry.list()}
        unknown = [m for m in self.config.maskers if m not in known]
        if unknown:  # a typo on the command line: say so now, not as a row of failures
            raise UnknownMaskerError(f"argument --maskers: unknown masker(s) {', '.join(unknown)}; "
                                     f"registered maskers: {', '.join(sorted(known)) or 'none'}")
        return list(self.config.maskers)

    def variants(self) -> list[Variant]:
        names = self.config.variants or self.spec.default_variants
        if names is None:
            return list(self.spec.variants)
        return [self.spec.variant(v) for v in names]

    def masker_options(self, name: str) -> dict[str, Any]:
        """Options for masker ``name``: every plain ``KEY`` (``--weights``, ``--allow-random-weights``
        and ``--masker-option KEY=VALUE`` reach every masker of the run), and ``NAME.KEY`` only
        that masker -- so ``dino_vit.mass_fraction=0.5`` does not reach ``winclip``."""
        names = set(self.config.maskers or self.spec.maskers)
        out: dict[str, Any] = {}
        scoped: dict[str, Any] = {}
        for key, value in self.config.masker_options.items():
            prefix, dot, sub = key.partition(".")
            if dot and prefix in names:
                if prefix == name:
                    scoped[sub] = value
            else:
                out[key] = value
        return {**out, **scoped}

    def workbench_settings(self, category: str, seed: int) -> WorkbenchSettings:
        c = self.config
        return WorkbenchSettings(data=c.data, category=category, profile=self.profile, seed=seed, device=str(self.device),
                                 ear_masks=c.ear_masks, synthetic=c.synthetic, progress=c.progress)

    def plan(self) -> list[PlannedUnit]:
        """Every unit of the table, in the order that shares work best (category, seed, masker, variant)."""
        units = []
        variants = self.variants()
        for category in self.categories():
            for seed in self.config.seeds:
                bench = CategoryWorkbench(self.workbench_settings(category, seed), self.cache, log=self.log)
                for masker in self.maskers():
                    mk = bench.masker_key(masker, self.masker_options(masker))
                    ek = bench.ear_key(mk)
                    for v in variants:
                        wk = bench.work_key(ek, mk, v.fader_config(self.profile.fader_head))
                        unit = UnitId(table=self.spec.name, data=self.config.data, profile=self.profile.name,
                                      masker=masker, variant=v.name, category=category, seed=seed)
                        units.append(PlannedUnit(unit, v, wk, mk, ek))
        return units

    # -- running -----------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t_start = time.perf_counter()
        units = self.plan()
        todo = [u for u in units if not self.store.is_done(u.unit, u.work_key)]
        s = self.summary
        s.planned, s.skipped = len(units), len(units) - len(todo)
        seeds = self.config.seeds
        self.log(f"{self.spec.name} on {self.config.data} ({self.profile.name} profile, {self.profile.image_size}px, "
                 f"device {self.device}, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}): "
                 f"{len(units)} units, {s.skipped} already finished, {len(todo)} to run -> {self.store.path}")
        work: dict[tuple[str, int], CategoryWorkbench] = {}
        compute_seconds = 0.0
        for i, pu in enumerate(todo, 1):
            wkey = (pu.unit.category, pu.unit.seed)
            cat = work.get(wkey)
            if cat is None:
                work.clear()  # one category's images and U-Net in memory at a time
                cat = work[wkey] = CategoryWorkbench(self.workbench_settings(*wkey), self.cache, log=self.log)
            eta = ""
            if s.computed:
                eta = f", ETA ~{_minutes(compute_seconds / s.computed * (len(todo) - i + 1))}"
            self.log(f"[{i}/{len(todo)}] {pu.unit.masker}/{pu.unit.variant} on {pu.unit.category} "
                     f"(seed {pu.unit.seed}){eta}")
            t0 = time.perf_counter()
            row = self._run_unit(pu, cat)
            self.store.put(row)
            s.ear_trained += cat.counts["ear_trained"]
            s.maskers_fitted += cat.counts["maskers_fitted"]
            cat.counts.update(ear_trained=0, maskers_fitted=0)  # counted once
            dt = time.perf_counter() - t0
            if row.status == "ok":
                if row.reused_from:
                    s.copied += 1
                    self.log(f"    copied from {row.reused_from} (same settings): image {row.image_auroc:.3f} / pixel {row.pixel_auroc:.3f}")
                else:
                    s.computed += 1
                    compute_seconds += dt
                    self.log(f"    done in {dt:.1f}s: image {row.image_auroc:.3f} / pixel {row.pixel_auroc:.3f}")
            else:
                s.failed += 1
                s.failures.append(f"{pu.unit.label()}: {row.reason}")
                self.log(f"    FAILED: {row.reason}")
        s.seconds = time.perf_counter() - t_start
        self.log(f"{self.spec.name}: {s.computed} computed, {s.copied} copied, {s.skipped} skipped, {s.failed} failed "
                 f"in {_minutes(s.seconds)} (EAR U-Nets trained: {s.ear_trained}, maskers fitted: {s.maskers_fitted})")
        return s

    def _run_unit(self, pu: PlannedUnit, cat: CategoryWorkbench) -> ResultRow:
        copied = self.copied_row(pu)
        return copied if copied is not None else self.compute_row(pu, cat)

    def copied_row(self, pu: PlannedUnit) -> ResultRow | None:
        """The row of another table computed with exactly this unit's settings, relabelled; None if there is none."""
        same = self.store.find_ok(pu.work_key)
        if same is not None and same.unit != pu.unit:
            return same.model_copy(update={"unit": pu.unit, "reused_from": same.unit.label(), "finished_at": None})
        return None

    def compute_row(self, pu: PlannedUnit, cat: CategoryWorkbench) -> ResultRow:
        """One unit's row, computed in this process.  Every executor (serial here, Ray in
        :mod:`fader_kit_bench.ray_executor`) goes through it, so they give the same rows."""
        try:
            return self._compute(pu, cat, self._row_base(pu))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, and the rest of the table goes on
            return self.failed_row(pu, failure_reason(exc))

    def failed_row(self, pu: PlannedUnit, reason: str) -> ResultRow:
        return ResultRow(**self._row_base(pu), status="failed", reason=reason,
                         config={"masker_key": pu.masker_key, "ear_key": pu.ear_key})

    def _row_base(self, pu: PlannedUnit) -> dict[str, Any]:
        return {"unit": pu.unit, "work_key": pu.work_key, "device": str(self.device),
                "environment": pipeline.environment()}

    def _compute(self, pu: PlannedUnit, cat: CategoryWorkbench, base: dict[str, Any]) -> ResultRow:
        split = cat.split()
        timings: dict[str, float] = {"load_data": cat.timings.pop("load_data", 0.0)}
        masks, fresh = self._get_masks(pu, cat)
        fader_cfg = pu.variant.fader_config(self.profile.fader_head)
        ev = cat.evaluate(masks, pu.ear_key, fader_cfg, pu.work_key)
        timings["masker"] = masks.seconds if fresh else 0.0
        timings.update(ev.timings)
        figure = None
        if fader_cfg is not None and self.config.figures > 0:
            from .figures import unit_panel

            unet, _ = cat.unet(pu.ear_key, masks)
            ear_model = FaderModel(unet, None, self.profile.fader_head, head=None)
            figure = unit_panel(self.figure_path(pu.unit), ear_model, ev.model, split, masks.test,
                                n_images=self.config.figures, device=self.device,
                                title=f"{pu.unit.masker} / {pu.variant.title} / {pu.unit.category} / seed {pu.unit.seed}")
        alone = cat.masker_alone(masks)
        config = {
            "masker_options": {k: v for k, v in self.masker_options(pu.unit.masker).items()},
            "masker_info": masks.info.model_dump(mode="json"), "masker_key": pu.masker_key, "ear_key": pu.ear_key,
            "fader": fader_cfg.model_dump(mode="json") if fader_cfg is not None else None,
            "fader_train": self.profile.fader.model_dump(mode="json") if fader_cfg is not None else None,
            "profile_digest": self.profile.digest(), "image_size": self.profile.image_size,
            "ear_masks": self.config.ear_masks,
            "masked_fraction_test": float(masks.test.float().mean()),
            "masker_alone": alone.model_dump(mode="json") if alone is not None else None,
            "fused": ev.fused.model_dump(mode="json") if ev.fused is not None else None,
            "diagnostics": ev.diagnostics.model_dump(mode="json") if ev.diagnostics is not None else None,
            "figure": str(figure.relative_to(self.out)) if figure is not None else None,
        }
        return ResultRow(**base, status="ok", weights=masks.info.weights, timings=timings, config=config,
                         **ev.metrics.model_dump())

    def figure_path(self, unit: UnitId) -> Path:
        slug = keys.safe_name(f"{unit.data}-{unit.profile}")
        return self.out / "figures" / unit.table / slug / keys.safe_name(f"{unit.masker}-{unit.variant}-{unit.category}-seed{unit.seed}.png")

    # -- masks -------------------------------------------------------------------------------
    def _get_masks(self, pu: PlannedUnit, cat: CategoryWorkbench):
        """Masks of (category, seed, masker) through the workbench.  A failure (missing weights,
        say) is remembered so that the masker's other variants fail with the same reason at once
        instead of retrying."""
        mem_key = (pu.unit.category, pu.unit.seed, pu.unit.masker)
        if mem_key in self._failed_maskers:
            raise self._failed_maskers[mem_key]
        try:
            return cat.masks(pu.unit.masker, self.masker_options(pu.unit.masker),
                             lambda: self._create_masker(pu.unit.masker, pu.unit.category))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._failed_maskers[mem_key] = exc
            raise

    def _create_masker(self, name: str, category: str) -> Masker:
        """The masker with this run's options; ``category`` reaches the factories that take it
        (WinCLIP's prompts name the object: ``metal_nut`` -> "metal nut")."""
        options = self.masker_options(name)
        options.setdefault("device", str(self.device))
        return self.registry.create(name, category=category, **options)


def failure_reason(exc: BaseException) -> str:
    """A failed row's ``reason``: the exception's type and message on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_table(config: BenchConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> RunSummary:
    """Plan and run one table (the ``fader-kit bench TABLE`` entry point)."""
    return BenchRunner(config, registry=registry, log=log).run()
