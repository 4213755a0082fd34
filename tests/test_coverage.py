"""``fader-kit bench coverage``: degraded ground truth covers the asked fraction of each defect,
and the runner scores EAR and FADeR on it (smoke profile, tiny synthetic data)."""
from __future__ import annotations

import pytest
import torch

from fader_kit.data import SyntheticConfig, load_category
from fader_kit_bench.coverage import (
    coverage_section, defect_coverage, degrade_masks, parse_gt_masker,
)
from fader_kit_bench.runner import BenchConfig, run_table
from fader_kit.engine.store import ResultStore

TINY = SyntheticConfig(n_train=6, n_test_good=2, n_per_defect=2, defect_kinds=("scratch", "hole", "stain"))


@pytest.fixture(scope="module")
def defects() -> torch.Tensor:
    split = load_category("synthetic", "washer", 64, seed=0, synthetic=TINY)
    gt = split.masks[split.labels.bool()]
    assert gt.any()
    return gt


@pytest.mark.parametrize("c", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_degraded_masks_cover_c_of_each_defect(defects, c):
    masks = degrade_masks(defects, c, seed=1)
    assert not (masks & ~defects.bool()).any()  # only ever a part of the ground truth
    fractions = torch.tensor(defect_coverage(masks, defects))  # one value per defect
    assert fractions.numel() >= defects.shape[0]
    assert torch.allclose(fractions, torch.full_like(fractions, c), atol=0.05 + 1.0 / 20)  # rounding of small defects
    assert torch.equal(masks, degrade_masks(defects, c, seed=1))  # seeded
    if 0 < c < 1:
        assert not torch.equal(masks, degrade_masks(defects, c, seed=2))


def test_gt_masker_names():
    assert parse_gt_masker("gt@25") == 0.25 and parse_gt_masker("patch_stats") is None
    with pytest.raises(ValueError, match="0..100"):
        parse_gt_masker("gt@150")


def test_coverage_bench_rows_carry_measured_coverage_and_diagnostics(tmp_path):
    cfg = BenchConfig(table="coverage", out=tmp_path, data="synthetic", categories=("washer",), maskers=("gt@0", "gt@100"),
                      profile="smoke", seeds=(0,), figures=0, synthetic=TINY)
    summary = run_table(cfg, log=lambda _: None)  # gt@C are mask sources of the engine: no runner of its own
    assert summary.failed == 0 and summary.computed == 4
    rows = {(r.unit.masker, r.unit.variant): r for r in ResultStore(tmp_path).rows()}
    cov = {m: rows[(m, "ear")].config["diagnostics"]["mask"]["defect_pixels_masked"] for m in ("gt@0", "gt@100")}
    assert cov == {"gt@0": 0.0, "gt@100": 1.0}
    head = rows[("gt@0", "fader")].config["diagnostics"]["head"]
    assert 0.0 <= head["gate_unmasked_defect"] <= 1.0 and head["unmasked_defect_patches"] > 0
    assert rows[("gt@100", "fader")].config["diagnostics"]["head"]["gate_unmasked_defect"] is None  # nothing missed
    lines, paths = coverage_section(list(rows.values()), tmp_path, figure=True)
    assert any(line.startswith("| gt@100 | 100% |") for line in lines) and paths[0].is_file()
