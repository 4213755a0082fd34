"""The masker parity benchmark: one JSON line per masker with the graph's differences."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_parity_benchmark_reports_each_masker_and_the_graph_matches(capsys, tmp_path, monkeypatch):
    from fader_kit_bench.masker_parity import main

    monkeypatch.setenv("FADER_KIT_CACHE", str(tmp_path))
    assert main(["--category", "washer", "--maskers", "patch_stats", "--image-size", "64"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["masker"] for r in rows] == ["patch_stats"]
    row = rows[0]
    assert row["category"] == "washer" and row["test_images"] > 0
    assert 0 <= row["max_map_diff_over_range"] <= 1e-3
    assert 0 <= row["mask_pixels_differing"] <= 1e-3 and 0 < row["mask_share"] < 1
