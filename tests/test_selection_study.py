"""The selection study's summary: per-cell choice and regret, incomplete cells left out, the target
checks, resumable rows."""
from __future__ import annotations

import json
from pathlib import Path

from fader_kit_bench.selection_study import read_rows
from fader_kit_bench.selection_summary import category_stats, cells, summary, targets


def _row(category: str, seed: int, masker: str, kind: str, score: float, test: float) -> dict:
    return {"category": category, "seed": seed, "masker": masker, "kind": kind, "candidate": f"{masker}:{kind}",
            "selection_score": score, "test_auroc": test, "test_pixel_auroc": 0.9, "pseudo": {"blob": score},
            "fit_s": 1.0, "images_per_s": 10.0, "load": 1.0, "cpu": "cpu", "threads": 1, "size": 0.08, "copies": 3}


ROWS = [  # category a: the selector picks m:fused (0.80) while m:ear is best (0.90): regret 0.10
    _row("a", 0, "m", "masker", 0.60, 0.70), _row("a", 0, "m", "ear", 0.70, 0.90), _row("a", 0, "m", "fused", 0.80, 0.80),
    _row("b", 0, "m", "masker", 0.90, 0.95), _row("b", 0, "m", "ear", 0.60, 0.85), _row("b", 0, "m", "fused", 0.70, 0.90),
    _row("b", 1, "m", "masker", 0.90, 0.95),  # seed 1 stopped after one candidate: left out
]


def test_cells_regret_and_targets() -> None:
    done, partial = cells(ROWS)
    assert sorted(done) == [("a", 0), ("b", 0)] and partial == [("b", 1)]
    stats = category_stats(done)
    assert abs(stats["a"]["regret_mean"] - 0.10) < 1e-9 and stats["a"]["picks_best"] == 0.0
    assert stats["b"]["regret_mean"] == 0.0 and stats["b"]["picks_best"] == 1.0
    assert abs(stats["a"]["baseline"] - 0.90) < 1e-9  # the better of ear and the masker alone
    text = targets(stats)
    assert "MISSED: mean regret over categories 0.050" in text  # (0.10 + 0) / 2
    assert "MISSED: worst cell regret 0.100" in text
    assert "by more than 0.01 in: a" in text  # 0.80 < 0.90 - 0.01
    assert "b seed 1" in summary(ROWS)
    assert cells(ROWS, ["m:masker", "m:ear", "m:fused", "n:masker"])[0] == {}  # no cell has n's row yet


def test_a_row_marked_as_a_twin_leaves_the_race() -> None:
    """b's fused row scores as b's masker alone: with it marked, b's masker wins by its lead over ear
    (0.20), not by a tie with its copy; rows without the mark are judged as before."""
    twin = [_row("b", 0, "m", "masker", 0.90, 0.95), _row("b", 0, "m", "ear", 0.70, 0.85),
            {**_row("b", 0, "m", "fused", 0.90, 0.95), "same_as": "m:masker"}]
    text = summary(twin)
    assert "| b | 0 | m:masker | 0.950 | m:masker | 0.950 | 0.000 | 0.200 |" in text
    assert "| b | 0 | m:masker | 0.950 | m:masker | 0.950 | 0.000 | 0.000 |" in summary([{**r, "same_as": None} for r in twin])


def test_rows_survive_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"category": "a", "se')
    assert read_rows(path) == [ROWS[0]]
    assert read_rows(tmp_path / "missing.jsonl") == []
