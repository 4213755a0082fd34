"""``fader-kit bench TABLE``: a table's settings as a grid of the engine (:mod:`fader_kit.engine`).

Work is shared, never repeated: per (data, category, profile, seed) one EAR U-Net (random-blob
training, so it serves every masker and variant); per masker one fit and one set of binary masks;
per (masker, variant) one FADeR training.  The serial and the Ray executors run the same grid
and write the same rows; the coverage study's ``gt@C`` pseudo-maskers are mask sources of the
engine, so it runs on either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from fader_kit.model.config import get_profile
from fader_kit.data import SyntheticConfig, list_categories
from fader_kit.util.devices import resolve_device
from fader_kit.engine.runner import Grid, GridRunner, Head, PlannedUnit, RunSummary
from fader_kit.engine.sources import mask_source, parse_gt_masker
from fader_kit.engine.workbench import CategoryWorkbench, Evaluation
from fader_kit.errors import ConfigError
from fader_kit.model.fusion_rules import Fused
from fader_kit.maskers.registry import MaskerRegistry, UnknownMaskerError, default_registry

from . import selection_job  # noqa: F401  (registers the selection table's job kind)
from .tables import TableSpec, get_table

Log = Callable[[str], None]


class BenchConfig(BaseModel):
    """One ``fader-kit bench TABLE`` invocation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    out: Path
    data: str = "synthetic"
    categories: tuple[str, ...] | None = Field(None, description="None = every category of the data")
    maskers: tuple[str, ...] | None = Field(None, description="None = the table's maskers")
    variants: tuple[str, ...] | None = Field(None, description="None = the table's default variants")
    profile: str = "cpu"
    device: str = "cpu"
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="training seeds; each is a unit of its own")
    masker_options: dict[str, Any] = Field(default_factory=dict)
    figures: int = Field(2, ge=0, description="anomalous test images per figure panel (0 = no panels)")
    fused: Fused = Field(
        False, description="also score each model fused with the masker's score map (True or a fusion rule)")
    synthetic: SyntheticConfig | None = Field(None, description="override the synthetic generator's counts")
    data_seed: int = Field(0, ge=0, description="seed of the synthetic data (part of every key)")
    ear_masks: Literal["blobs", "masker"] = Field(
        "blobs", description="train the EAR U-Net on random blobs only (one U-Net per category, shared by every "
        "masker) or on each masker's masks united with blobs (one U-Net per category and masker)")
    progress: bool = False


def masker_options_for(options: dict[str, Any], name: str, names: set[str]) -> dict[str, Any]:
    """Options for masker ``name``: every plain ``KEY`` (``--weights``, ``--allow-random-weights``
    and ``--masker-option KEY=VALUE`` reach every masker of the run), and ``NAME.KEY`` only that
    masker -- so ``dino_vit.mass_fraction=0.5`` does not reach ``winclip``."""
    out: dict[str, Any] = {}
    scoped: dict[str, Any] = {}
    for key, value in options.items():
        prefix, dot, sub = key.partition(".")
        if dot and prefix in names:
            if prefix == name:
                scoped[sub] = value
        else:
            out[key] = value
    return {**out, **scoped}


def _categories(config: BenchConfig) -> tuple[str, ...]:
    available = list_categories(config.data)
    if config.categories is None:
        return tuple(available)
    unknown = [c for c in config.categories if c not in available]
    if unknown:
        raise ConfigError(f"argument --categories: {', '.join(unknown)} not in {config.data} "
                          f"(available: {', '.join(available)})")
    return tuple(config.categories)


def _maskers(config: BenchConfig, spec: TableSpec, registry: MaskerRegistry) -> list[str]:
    names = list(config.maskers) if config.maskers is not None else list(spec.maskers)
    real = [m for m in names if parse_gt_masker(m) is None]
    if config.maskers is not None and real:  # a typo on the command line: say so now, not as a row of failures
        known = {e.name for e in registry.list()}
        unknown = [m for m in real if m not in known]
        if unknown:
            raise UnknownMaskerError(f"argument --maskers: unknown masker(s) {', '.join(unknown)}; "
                                     f"registered maskers: {', '.join(sorted(known)) or 'none'}")
    return names


def table_grid(config: BenchConfig, registry: MaskerRegistry | None = None) -> Grid:
    """The grid of one table invocation."""
    spec = get_table(config.table)
    profile = get_profile(config.profile)
    names = _maskers(config, spec, registry or default_registry())
    scope = set(names)
    sources = tuple(mask_source(n, masker_options_for(config.masker_options, n, scope)) for n in names)
    variant_names = config.variants or spec.default_variants
    variants = list(spec.variants) if variant_names is None else [spec.variant(v) for v in variant_names]
    heads = tuple(Head(name=v.name, kind=spec.kind, title=v.title, config=v.fader_config(profile.fader_head))
                  for v in variants)
    return Grid(table=spec.name, out=config.out, data=config.data, categories=_categories(config), sources=sources,
                heads=heads, seeds=config.seeds, profile=profile, device=str(resolve_device(config.device)),
                ear_masks=config.ear_masks, synthetic=config.synthetic, data_seed=config.data_seed,
                figures=config.figures, fused=config.fused, progress=config.progress)


def unit_figure(runner: GridRunner, pu: PlannedUnit, bench: CategoryWorkbench, ev: Evaluation) -> Path | None:
    """The figure panel of one FADeR unit: input, masks, soft mask, EAR and FADeR maps."""
    from fader_kit.engine.keys import safe_name

    from .figures import unit_panel

    u = pu.unit
    path = (runner.out / "figures" / u.table / safe_name(f"{u.data}-{u.profile}")
            / safe_name(f"{u.masker}-{u.variant}-{u.category}-seed{u.seed}.png"))
    return unit_panel(path, runner.ear_model(pu, bench), ev.model, bench.split(), ev.masks.test,
                      n_images=runner.grid.figures, device=bench.device, test_scores=ev.masks.test_scores,
                      title=f"{u.masker} / {pu.head.title} / {u.category} / seed {u.seed}")


def table_runner(config: BenchConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> GridRunner:
    return GridRunner(table_grid(config, registry), registry=registry, log=log, figure=unit_figure)


def run_table(config: BenchConfig, *, registry: MaskerRegistry | None = None, log: Log = print) -> RunSummary:
    """Plan and run one table serially (the ``fader-kit bench TABLE`` entry point)."""
    return table_runner(config, registry=registry, log=log).run()


def run_table_ray(config: BenchConfig, options: Any = None, *, registry: MaskerRegistry | None = None,
                  log: Log = print) -> RunSummary:
    """Plan one table and run its units as Ray tasks (``fader-kit bench TABLE --executor ray``)."""
    from fader_kit.engine.ray import run_grid_ray

    return run_grid_ray(table_grid(config, registry), options, registry=registry, log=log, figure=unit_figure)


__all__ = ["BenchConfig", "masker_options_for", "run_table", "run_table_ray", "table_grid", "table_runner",
           "unit_figure"]
