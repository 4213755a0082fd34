"""fader_kit_bench.trained_maskers: masker specs, rows measured on a constructed split, resume, summary."""
from __future__ import annotations

import pytest
import torch
from masker_cases import stripes_with_defects

import fader_kit.engine.workbench as workbench_module
from fader_kit.data.split import CategorySplit
from fader_kit.engine.sources import MaskerSource, parse_spec
from fader_kit.engine.store import ResultStore
from fader_kit.errors import ConfigError
from fader_kit.engine.stats import SeedSummary
from fader_kit_bench import trained_maskers as bench
from fader_kit_bench.masker_rows import MaskerRow


def _split() -> CategorySplit:
    train, _ = stripes_with_defects(12, 32, seed=0, defect=False, kind="red")
    normal, _ = stripes_with_defects(4, 32, seed=1, defect=False, kind="red")
    bad, masks = stripes_with_defects(4, 32, seed=2, defect=True, kind="red")
    return CategorySplit(
        dataset="constructed", category="stripes", image_size=32, train=train,
        test=torch.cat([normal, bad]), labels=torch.tensor([0] * 4 + [1] * 4),
        masks=torch.cat([torch.zeros(4, 1, 32, 32, dtype=torch.bool), masks]),
        test_paths=[f"t{i}" for i in range(8)], defect_types=["good"] * 4 + ["red"] * 4,
        train_paths=[f"n{i}" for i in range(12)],
    )


def test_parse_spec():
    assert parse_spec("ami_net") == MaskerSource("ami_net", {})
    spec = parse_spec("ami_net:centres=kmeans:k_sigma=1.5")
    assert (spec.name, spec.options, spec.row_name) == ("ami_net", {"centres": "kmeans", "k_sigma": 1.5},
                                                        "ami_net:centres=kmeans:k_sigma=1.5")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_spec("dsr:epochs")


def test_seed_summary_is_mean_and_sample_std():
    s = SeedSummary.of([1.0, 3.0])
    assert (s.mean, s.std) == pytest.approx((2.0, 2**0.5))
    assert (SeedSummary.of([5.0]).mean, SeedSummary.of([5.0]).std) == (5.0, 0.0)


def test_rows_go_to_the_store_and_a_rerun_resumes(tmp_path, monkeypatch):
    split = _split()
    monkeypatch.setattr(workbench_module, "load_category", lambda *a, **k: split)
    lines: list[str] = []
    monkeypatch.setattr(bench, "_err", lines.append)
    rows = bench.run(["patch_stats"], data="constructed", categories=["stripes"], seeds=[0, 1], out=tmp_path,
                     image_size=32)
    assert len(rows) == 2 and sum("done in" in line for line in lines) == 2
    row = rows[0]
    # the red square is an easy defect: patch_stats ranks it first, and masks more of it than of the rest
    assert row.pixel_auroc > 0.9 and row.image_auroc > 0.9 and 0 < row.aupro <= 1
    assert row.tpr > row.fpr and row.threads == torch.get_num_threads() and row.fit_cpu_s >= 0
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 3  # header + 2 rows
    stored = ResultStore(tmp_path).rows()
    assert {r.unit.table for r in stored} == {"trained_maskers"}
    assert all(ResultStore(tmp_path).details.load(f"{r.config['masker_key']}.alone") is not None for r in stored)
    lines.clear()
    rows = bench.run(["patch_stats"], data="constructed", categories=["stripes"], seeds=[0, 1, 2], out=tmp_path,
                     image_size=32)
    assert sum("done in" in line for line in lines) == 1 and len(rows) == 3  # only seed 2 was measured
    summary = bench.summarise(rows)
    assert len(summary) == 1 and summary[0].seeds == [0, 1, 2]
    values = [r.pixel_auroc for r in rows]
    pixel = summary[0].metrics["pixel_auroc"]
    assert pixel.mean == pytest.approx(sum(values) / 3) and pixel.std >= 0
    assert "| stripes | `patch_stats` |" in bench.table(summary)


def test_diagnostics_table_sets_intermediate_maps_beside_the_output():
    rows = [
        MaskerRow(category="c", masker="dsr", pixel_auroc=0.7, image_auroc=0.9,
                  diagnostics={"coarse": {"pixel_auroc": 0.8, "image_auroc": 1.0}}),
        MaskerRow(category="c", masker="dsr", pixel_auroc=0.9, image_auroc=0.7,
                  diagnostics={"coarse": {"pixel_auroc": 0.6, "image_auroc": 0.8}}),
        MaskerRow(category="c", masker="patch_stats", pixel_auroc=0.5, image_auroc=0.5),  # no diagnostics
    ]
    lines = bench.diagnostics_table(rows).splitlines()
    assert len(lines) == 4 and "patch_stats" not in "\n".join(lines)
    assert lines[2] == "| c | `dsr` | score map (the output) | 2 | 0.800 ± 0.141 | 0.800 ± 0.141 |"
    assert lines[3] == "| c | `dsr` | coarse | 2 | 0.700 ± 0.141 | 0.900 ± 0.141 |"
    assert bench.diagnostics_table(rows[2:]) == ""
