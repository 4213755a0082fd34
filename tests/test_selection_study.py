"""The selection study's summary: options, Spearman and regret per (category, seed), resumable rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fader_kit_bench.selection_study import evaluate_option, options, read_rows, summary


def _row(category: str, masker: str, test: float, blob: float, scratch: float) -> dict:
    return {"category": category, "seed": 0, "masker": masker, "test_auroc": test,
            "pseudo": {"blob@0.1": blob, "scratch@0.1": scratch}, "fit_s": 1.0, "images_per_s": 10.0}


ROWS = [
    _row("a", "m1", 0.70, 0.60, 0.90), _row("a", "m2", 0.90, 0.80, 0.70), _row("a", "m3", 0.80, 0.70, 0.80),
    _row("b", "m1", 0.95, 0.90, 0.50), _row("b", "m2", 0.85, 0.60, 0.60),
]


def test_options_are_each_kind_and_all_kinds_per_size() -> None:
    assert options(ROWS) == {"blob@0.1": ["blob@0.1"], "scratch@0.1": ["scratch@0.1"],
                             "all@0.1": ["blob@0.1", "scratch@0.1"]}


def test_spearman_and_regret_by_hand() -> None:
    groups = {("a", 0): ROWS[:3], ("b", 0): ROWS[3:]}
    blob = evaluate_option(groups, ["blob@0.1"])
    assert blob[("a", 0)] == (pytest.approx(1.0), 0.0)  # blob ranks a's maskers as the test does
    scratch = evaluate_option(groups, ["scratch@0.1"])
    assert scratch[("a", 0)] == (pytest.approx(-1.0), pytest.approx(0.2))  # picks m1: 0.90 - 0.70
    assert scratch[("b", 0)][1] == pytest.approx(0.10)  # picks m2 (0.6 > 0.5): 0.95 - 0.85
    text = summary(ROWS, dev=["a"])
    assert "| blob@0.1 | 1.00 (n=1) | 0.000 / 0.000 |" in text


def test_rows_survive_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"category": "a", "se')
    assert read_rows(path) == [ROWS[0]]
    assert read_rows(tmp_path / "missing.jsonl") == []
