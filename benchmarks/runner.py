"""The benchmark runner: plan the units of a table, skip the finished ones, run the rest.

Work is shared, never repeated: per (data, category, profile, seed) one EAR U-Net (random-blob
training, so it serves every masker and variant); per masker one fit and one set of binary
masks; per (masker, variant) one FADeR training.  All of them go through the pipeline stages of
:mod:`fader_kit.pipeline` -- the same code as ``fader-kit evaluate`` -- and are cached under
``<out>/cache`` by configuration digests (see :mod:`fader_kit_bench.cache`).

A unit that fails (missing weights, an unknown or broken masker, bad data) is recorded as
``failed`` with its reason and the rest of the table runs; ``KeyboardInterrupt`` stops the run and
keeps every row that had finished.  A finished row computed with the same settings in *another*
table (table3's "ours" is table2's FADeR on the same masker) is copied, not recomputed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fader_kit import pipeline
from fader_kit.config import Profile, get_profile
from fader_kit.data import CategorySplit, SyntheticConfig, list_categories, load_category
from fader_kit.devices import resolve_device
from fader_kit.fader import FaderModel
from fader_kit.interfaces import Masker
from fader_kit.registry import MaskerRegistry, UnknownMaskerError, default_registry

from . import cache as keys
from .cache import MaskSet, WorkCache
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
    seed: int = 0
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


class _CategoryWork:
    """Lazily loaded state of one category: its images and its EAR U-Net (loaded once)."""

    def __init__(self, runner: "BenchRunner", category: str) -> None:
        self.runner = runner
        self.category = category
        self._split: CategorySplit | None = None
        self._unet: tuple[str, torch.nn.Module] | None = None  # (ear key, U-Net): the last one used
        self.timings: dict[str, float] = {}

    def split(self) -> CategorySplit:
        if self._split is None:
            r = self.runner
            t = time.perf_counter()
            self._split = load_category(r.config.data, self.category, r.profile.image_size, seed=r.config.seed,
                                        progress=r.config.progress, synthetic=r.config.synthetic)
            self.timings["load_data"] = time.perf_counter() - t
        return self._split

    def unet(self, ear_key: str, masks: torch.Tensor | None) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The EAR U-Net of ``ear_key``: in memory, from the cache file, or trained (on ``masks``
        united with random blobs; ``None`` = blobs only)."""
        r = self.runner
        if self._unet is not None and self._unet[0] == ear_key:
            return self._unet[1], {"reused": True}
        split = self.split()
        unet, info = pipeline.train_ear(split.train, masks, r.profile, seed=r.config.seed, device=r.device,
                                        progress=r.config.progress, cache=r.cache.ear_path(ear_key))
        if not info["reused"]:
            r.summary.ear_trained += 1
            how = "blobs only; shared by every masker" if masks is None else "masker's masks + blobs"
            r.log(f"    EAR U-Net ({self.category}): trained in {info['seconds']:.1f}s ({how})")
        self._unet = (ear_key, unet)
        return unet, info


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
        self.store = ResultStore(self.out)
        self.cache = WorkCache(self.out)
        self.data_key = keys.data_key(config.data, config.synthetic)
        self.summary = RunSummary()
        self._masks: dict[tuple[str, str], MaskSet | BaseException] = {}

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
        if self.config.variants is None:
            return list(self.spec.variants)
        return [self.spec.variant(v) for v in self.config.variants]

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

    def plan(self) -> list[PlannedUnit]:
        """Every unit of the table, in the order that shares work best (category, masker, variant)."""
        units = []
        variants = self.variants()
        for category in self.categories():
            shared_ek = keys.ear_key(self.data_key, category, self.profile, self.config.seed)
            for masker in self.maskers():
                mk = keys.masker_key(masker, self.masker_options(masker), self.data_key, category,
                                     self.profile.image_size, self.config.seed)
                # trained on the masker's masks, the U-Net depends on them: the masker key stands for them
                ek = shared_ek if self.config.ear_masks == "blobs" else keys.digest({"ear": shared_ek, "masks": mk})
                for v in variants:
                    fader_cfg = v.fader_config(self.profile.fader_head)
                    wk = keys.work_key(ear=ek, masker=mk, fader=fader_cfg, profile=self.profile, seed=self.config.seed)
                    unit = UnitId(table=self.spec.name, data=self.config.data, profile=self.profile.name,
                                  masker=masker, variant=v.name, category=category, seed=self.config.seed)
                    units.append(PlannedUnit(unit, v, wk, mk, ek))
        return units

    # -- running -----------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t_start = time.perf_counter()
        units = self.plan()
        todo = [u for u in units if not self.store.is_done(u.unit, u.work_key)]
        s = self.summary
        s.planned, s.skipped = len(units), len(units) - len(todo)
        self.log(f"{self.spec.name} on {self.config.data} ({self.profile.name} profile, {self.profile.image_size}px, "
                 f"device {self.device}, seed {self.config.seed}): {len(units)} units, {s.skipped} already finished, "
                 f"{len(todo)} to run -> {self.store.path}")
        work: dict[str, _CategoryWork] = {}
        compute_seconds = 0.0
        for i, pu in enumerate(todo, 1):
            cat = work.get(pu.unit.category)
            if cat is None:
                work.clear()  # one category's images and U-Net in memory at a time
                cat = work[pu.unit.category] = _CategoryWork(self, pu.unit.category)
            eta = ""
            if s.computed:
                eta = f", ETA ~{_minutes(compute_seconds / s.computed * (len(todo) - i + 1))}"
            self.log(f"[{i}/{len(todo)}] {pu.unit.masker}/{pu.unit.variant} on {pu.unit.category}{eta}")
            t0 = time.perf_counter()
            row = self._run_unit(pu, cat)
            self.store.put(row)
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

    def _run_unit(self, pu: PlannedUnit, cat: _CategoryWork) -> ResultRow:
        base = {"unit": pu.unit, "work_key": pu.work_key, "device": str(self.device),
                "environment": pipeline.environment()}
        try:
            same = self.store.find_ok(pu.work_key)
            if same is not None and same.unit != pu.unit:
                return same.model_copy(update={"unit": pu.unit, "reused_from": same.unit.label(), "finished_at": None})
            return self._compute(pu, cat, base)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, and the rest of the table goes on
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            weights = None
            cached = self._masks.get((pu.unit.category, pu.unit.masker))
            if isinstance(cached, MaskSet):
                weights = cached.info.weights
            return ResultRow(**base, status="failed", reason=reason, weights=weights,
                             config={"masker_key": pu.masker_key, "ear_key": pu.ear_key})

    def _compute(self, pu: PlannedUnit, cat: _CategoryWork, base: dict[str, Any]) -> ResultRow:
        timings: dict[str, float] = {}
        split = cat.split()
        timings["load_data"] = cat.timings.pop("load_data", 0.0)
        masks, fresh = self._get_masks(pu, split)
        timings["masker"] = masks.seconds if fresh else 0.0
        unet, ear_info = cat.unet(pu.ear_key, masks.train if self.config.ear_masks == "masker" else None)
        timings["ear_train"] = float(ear_info.get("seconds", 0.0)) if not ear_info["reused"] else 0.0
        fader_cfg = pu.variant.fader_config(self.profile.fader_head)
        if fader_cfg is None:
            model = FaderModel(unet, None, self.profile.fader_head, head=None)
            timings["fader_train"] = 0.0
        else:
            model, info = pipeline.train_fader_on(unet, split.train, masks.train, fader_cfg, self.profile.fader,
                                                  seed=self.config.seed, device=self.device, progress=self.config.progress)
            timings["fader_train"] = info["seconds"]
        t = time.perf_counter()
        maps = pipeline.anomaly_maps(model, split.test, masks.test, batch_size=self.profile.eval_batch_size,
                                     device=self.device, progress=self.config.progress)
        metrics = pipeline.metrics_from_maps(maps, split.labels, split.masks)
        timings["evaluate"] = time.perf_counter() - t
        figure = None
        if fader_cfg is not None and self.config.figures > 0:
            from .figures import unit_panel

            ear_model = FaderModel(unet, None, self.profile.fader_head, head=None)
            figure = unit_panel(self.figure_path(pu.unit), ear_model, model, split, masks.test,
                                n_images=self.config.figures, device=self.device,
                                title=f"{pu.unit.masker} / {pu.variant.title} / {pu.unit.category}")
        config = {
            "masker_options": {k: v for k, v in self.masker_options(pu.unit.masker).items()},
            "masker_info": masks.info.model_dump(mode="json"), "masker_key": pu.masker_key, "ear_key": pu.ear_key,
            "fader": fader_cfg.model_dump(mode="json") if fader_cfg is not None else None,
            "fader_train": self.profile.fader.model_dump(mode="json") if fader_cfg is not None else None,
            "profile_digest": self.profile.digest(), "image_size": self.profile.image_size,
            "ear_masks": self.config.ear_masks,
            "masked_fraction_test": float(masks.test.float().mean()),
            "figure": str(figure.relative_to(self.out)) if figure is not None else None,
        }
        return ResultRow(**base, status="ok", weights=masks.info.weights, timings=timings, config=config,
                         **metrics.model_dump())

    def figure_path(self, unit: UnitId) -> Path:
        slug = keys._safe(f"{unit.data}-{unit.profile}")
        return self.out / "figures" / unit.table / slug / keys._safe(f"{unit.masker}-{unit.variant}-{unit.category}-seed{unit.seed}.png")

    # -- masks -------------------------------------------------------------------------------
    def _get_masks(self, pu: PlannedUnit, split: CategorySplit) -> tuple[MaskSet, bool]:
        """Binary masks of (category, masker) from memory, the cache, or a fresh fit (then
        ``fresh`` is True, and the fit's time is charged to this unit).

        A failure (missing weights, say) is remembered so that the masker's other variants in
        this category fail with the same reason at once instead of retrying."""
        mem_key = (pu.unit.category, pu.unit.masker)
        cached = self._masks.get(mem_key)
        if isinstance(cached, BaseException):
            raise cached
        if cached is not None:
            return cached, False
        fresh = False
        try:
            masks = self.cache.load_masks(pu.unit.masker, pu.masker_key)
            if masks is None:
                masks, fresh = self._fit_and_mask(pu, split), True
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._masks[mem_key] = exc
            raise
        self._masks[mem_key] = masks
        return masks, fresh

    def _create_masker(self, name: str) -> Masker:
        options = self.masker_options(name)
        options.setdefault("device", str(self.device))
        return self.registry.create(name, **options)

    def _fit_and_mask(self, pu: PlannedUnit, split: CategorySplit) -> MaskSet:
        t = time.perf_counter()
        name = pu.unit.masker
        masker = self._create_masker(name)
        masker.to(self.device)
        state = self.cache.masker_path(name, pu.masker_key)
        if state.is_file():
            masker.load(state)
        else:
            masker.fit(split.train.to(self.device) if split.train.shape[0] <= 4096 else split.train,
                       seed=self.config.seed, progress=self.config.progress)
            masker.save(state)
            self.summary.maskers_fitted += 1
        bs = self.profile.eval_batch_size
        train = pipeline.compute_masks(masker, split.train, batch_size=bs, device=self.device,
                                       progress=self.config.progress, desc="masks (train)")
        test = pipeline.compute_masks(masker, split.test, batch_size=bs, device=self.device,
                                      progress=self.config.progress, desc="masks (test)")
        masks = MaskSet(train=train, test=test, info=masker.info, seconds=time.perf_counter() - t)
        self.cache.save_masks(name, pu.masker_key, masks)
        self.log(f"    masker {name} (weights: {masker.info.weights}): fitted and masked in {masks.seconds:.1f}s; "
                 f"masked fraction train {train.float().mean():.3f}, test {test.float().mean():.3f}")
        return masks


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_table(config: BenchConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> RunSummary:
    """Plan and run one table (the ``fader-kit bench TABLE`` entry point)."""
    return BenchRunner(config, registry=registry, log=log).run()
