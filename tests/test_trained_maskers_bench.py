"""fader_kit_bench.trained_maskers: masker specs, rows measured on a constructed split, resume, summary."""
from __future__ import annotations

import json

import pytest
import torch
from masker_cases import stripes_with_defects

import fader_kit.data as data_module
from fader_kit.data.split import CategorySplit
from fader_kit_bench import trained_maskers as bench


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
    assert bench.parse_spec("ami_net") == ("ami_net", {})
    assert bench.parse_spec("ami_net:centres=kmeans:k_sigma=1.5") == ("ami_net", {"centres": "kmeans", "k_sigma": 1.5})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.parse_spec("dsr:epochs")


def test_mean_std_and_table():
    assert bench.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert bench.mean_std([5.0]) == (5.0, 0.0)


def test_rows_are_appended_and_a_rerun_resumes(tmp_path, monkeypatch):
    split = _split()
    monkeypatch.setattr(data_module, "load_category", lambda *a, **k: split)
    calls = []
    real = bench.measure_one

    def counted(spec, s, **kw):
        calls.append((spec, kw["seed"]))
        return real(spec, s, **kw)

    monkeypatch.setattr(bench, "measure_one", counted)
    rows = bench.run(["patch_stats"], data="constructed", categories=["stripes"], seeds=[0, 1], out=tmp_path,
                     image_size=32)
    assert calls == [("patch_stats", 0), ("patch_stats", 1)] and len(rows) == 2
    row = rows[0]
    # the red square is an easy defect: patch_stats ranks it first, and masks more of it than of the rest
    assert row["pixel_auroc"] > 0.9 and row["image_auroc"] > 0.9 and 0 < row["aupro"] <= 1
    assert row["tpr"] > row["fpr"] and row["threads"] == torch.get_num_threads() and row["fit_cpu_s"] >= 0
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 3  # header + 2 rows
    # a torn last line (an interrupted run) is skipped, and measured rows are not measured again
    with (tmp_path / "rows.jsonl").open("a") as f:
        f.write('{"data": "constructed", "cat')
    rows = bench.run(["patch_stats"], data="constructed", categories=["stripes"], seeds=[0, 1, 2], out=tmp_path,
                     image_size=32)
    assert calls[2:] == [("patch_stats", 2)] and len(rows) == 3
    summary = bench.summarise(rows)
    assert len(summary) == 1 and summary[0]["seeds"] == [0, 1, 2]
    mean, std = summary[0]["pixel_auroc"]
    values = [r["pixel_auroc"] for r in rows]
    assert mean == pytest.approx(sum(values) / 3) and std >= 0
    assert "| stripes | `patch_stats` |" in bench.table(summary)
    assert json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])["seed"] == 0


def test_diagnostics_table_sets_intermediate_maps_beside_the_output():
    rows = [
        {"category": "c", "masker": "dsr", "pixel_auroc": 0.7, "image_auroc": 0.9,
         "diagnostics": {"coarse": {"pixel_auroc": 0.8, "image_auroc": 1.0}}},
        {"category": "c", "masker": "dsr", "pixel_auroc": 0.9, "image_auroc": 0.7,
         "diagnostics": {"coarse": {"pixel_auroc": 0.6, "image_auroc": 0.8}}},
        {"category": "c", "masker": "patch_stats", "pixel_auroc": 0.5, "image_auroc": 0.5},  # no diagnostics
    ]
    lines = bench.diagnostics_table(rows).splitlines()
    assert len(lines) == 4 and "patch_stats" not in "\n".join(lines)
    assert lines[2] == "| c | `dsr` | score map (the output) | 2 | 0.800 ± 0.141 | 0.800 ± 0.141 |"
    assert lines[3] == "| c | `dsr` | coarse | 2 | 0.700 ± 0.141 | 0.900 ± 0.141 |"
    assert bench.diagnostics_table(rows[2:]) == ""
