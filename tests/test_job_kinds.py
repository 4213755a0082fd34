"""Job kinds: any unit runs through the engine's plan, executor and store; typed row facts; one
seed aggregation; the probes are grids (rows in the store, a rerun resumes)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fader_kit.model.config import get_profile
from fader_kit.engine import keys
from fader_kit.engine.aggregate import mean_over_seeds, over_seeds
from fader_kit.engine.jobs import Head, JobKind, PlannedUnit, RowFacts, UnitContext, job_kind, register_job_kind
from fader_kit.engine.runner import Grid, GridRunner, run_grid
from fader_kit.engine.sources import MaskerSource
from fader_kit.engine.store import ResultRow, ResultStore
from fader_kit.engine.unit_kinds import MaskerFacts, ModelFacts
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys
from fader_kit.errors import ConfigError
from fader_kit.model.pipeline import Metrics


class CountFacts(RowFacts):
    n_test: int = 0
    seed_twice: int = 0


class CountJob(JobKind):
    """A unit that trains nothing: counts the test images and doubles the seed."""

    name = "count_test_images"
    facts = CountFacts
    needs_unet = False
    calls: list[int] = []

    def keys(self, bench: CategoryWorkbench, source: Any, head: Head, context: UnitContext) -> UnitKeys:
        return UnitKeys(bench.masks_key(source), "", keys.digest({"count": bench.masks_key(source)}))

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        self.calls.append(pu.unit.seed)
        facts = CountFacts(n_test=int(bench.split().test.shape[0]), seed_twice=2 * pu.unit.seed)
        return ResultRow(**context.row_base(pu), status="ok", image_auroc=0.5, config=facts.stored()), {}


register_job_kind(CountJob())


def _grid(out: Path, kind: str = "count_test_images") -> Grid:
    return Grid(table="counts", out=out, data="synthetic", categories=("washer",),
                sources=(MaskerSource("patch_stats"),), heads=(Head(name="n", kind=kind),), seeds=(0, 3),
                profile=get_profile("smoke"))


def test_a_registered_kind_runs_through_the_store_and_a_rerun_resumes(tmp_path):
    CountJob.calls.clear()
    summary = run_grid(_grid(tmp_path), log=lambda _: None)
    assert (summary.computed, summary.failed) == (2, 0) and CountJob.calls == [0, 3]
    rows = ResultStore(tmp_path).rows()
    facts = sorted((CountFacts.of(r) for r in rows), key=lambda f: f.seed_twice)
    assert [f.seed_twice for f in facts] == [0, 6] and all(f.n_test > 0 for f in facts)
    again = run_grid(_grid(tmp_path), log=lambda _: None)
    assert (again.computed, again.skipped) == (0, 2) and CountJob.calls == [0, 3]  # nothing recomputed


def test_an_unknown_kind_fails_before_any_work_naming_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown job kind 'nope'.*model"):
        GridRunner(_grid(tmp_path, "nope"))
    assert job_kind("masker").facts is MaskerFacts and job_kind("model").facts is ModelFacts


def test_a_second_kind_under_a_taken_name_is_refused():
    class Other(CountJob):
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_job_kind(Other())


def test_facts_store_what_was_set_with_nested_models_whole():
    facts = ModelFacts(masker_key="k", masker_alone=Metrics(image_auroc=0.5, pixel_auroc=0.75))
    stored = facts.stored()
    assert stored == {"masker_key": "k", "masker_alone": {"image_auroc": 0.5, "pixel_auroc": 0.75,
                                                          "pixel_aupro": None, "image_f1_max": None}}
    row = ResultRow(unit=_unit(), status="ok", work_key="w", config={**stored, "written_by_a_newer_version": 1})
    back = ModelFacts.of(row)
    assert back.masker_alone == Metrics(image_auroc=0.5, pixel_auroc=0.75) and back.fused is None
    assert back.model_extra == {"written_by_a_newer_version": 1}


def _unit() -> Any:
    from fader_kit.engine.store import UnitId

    return UnitId(table="t", data="d", profile="p", masker="m", variant="v", category="c", seed=0)


def test_over_seeds_is_the_mean_and_sample_sd_of_what_was_measured():
    s = over_seeds([0.5, None, 0.7, float("nan"), 0.9])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.7), pytest.approx(0.2))
    assert over_seeds([None]).n == 0 and math.isnan(over_seeds([]).mean)
    assert mean_over_seeds([None]) is None and mean_over_seeds([1.0, 2.0]) == 1.5


def test_evaluate_takes_a_fader_head(tmp_path):
    from fader_kit.engine.evaluate import evaluate_category

    with pytest.raises(ConfigError, match="head 'ear' must be a FADeR head"):
        evaluate_category("synthetic", "washer", "patch_stats", get_profile("smoke"), out=tmp_path,
                          head=Head(name="ear"))


def test_a_row_whose_facts_do_not_read_names_the_row_and_what_to_do():
    row = ResultRow(unit=_unit(), status="ok", work_key="w", config={"masker_alone": {"image_auroc": "high"}})
    with pytest.raises(ConfigError, match=r"results row t m/v c \(seed 0\).*ModelFacts.*masker_alone.*new --out"):
        ModelFacts.of(row)
