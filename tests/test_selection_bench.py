"""``fader-kit bench selection``: every masker x score kind a candidate row, the selection report
(chosen, best, regret) made from the rows, each masker measured once, a rerun that skips (smoke
profile, a tiny synthetic category, cheap maskers registered like a third-party plugin)."""
from __future__ import annotations

import pytest

from fader_kit.data import SyntheticConfig
from fader_kit.deploy.score_kinds import SCORE_NAMES
from fader_kit.engine.store import ResultStore
from fader_kit.util.files import file_lock
from fader_kit_bench.report import build_report
from fader_kit_bench.runner import BenchConfig, run_table
from fader_kit_bench.selection_job import SelectionFacts, summary_rows
from fader_kit_bench.selection_summary import cell_report

from test_bench_runner import registry

SMALL = SyntheticConfig(n_train=10, n_test_good=3, n_per_defect=2, defect_kinds=("scratch", "hole"))


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("selection")
    cfg = BenchConfig(table="selection", out=out, categories=("washer",), maskers=("diff_a", "diff_b"),
                      profile="smoke", synthetic=SMALL, figures=0)
    first = run_table(cfg, registry=registry(), log=lambda _: None)
    return cfg, first, out


def test_every_masker_and_kind_is_a_row_with_its_selection_facts(selection_run):
    _, first, out = selection_run
    rows = [r for r in ResultStore(out).rows() if r.unit.table == "selection"]
    assert first.failed == 0
    assert sorted((r.unit.masker, r.unit.variant) for r in rows) == sorted(
        (m, k) for m in ("diff_a", "diff_b") for k in SCORE_NAMES)
    for r in rows:
        f = SelectionFacts.of(r)
        assert set(f.pseudo) == {"blob", "deform", "scratch"}  # cutpaste: the head's and the fusion's own kind
        assert f.selection_score == pytest.approx(sum(f.pseudo.values()) / 3)
        assert 0.0 <= r.image_auroc <= 1.0 and 0.0 <= r.pixel_auroc <= 1.0
        assert f.n_fit + f.n_held_out == SMALL.n_train and f.n_held_out >= 2
        assert f.same_as is None or (r.unit.variant == "fused" and f.same_as in ("masker", "ear"))
    fit = {(r.unit.masker, r.unit.variant): SelectionFacts.of(r).fit_s for r in rows}
    for m in ("diff_a", "diff_b"):  # the head and the fusion are trained on top of the EAR U-Net
        assert fit[(m, "masker")] < fit[(m, "ear")] <= fit[(m, "fader")]
        assert fit[(m, "ear")] <= fit[(m, "fused")]
    cached = list((out / "cache" / "selection").glob("*.json"))
    assert len([p for p in cached if not p.name.startswith("ear-")]) == 2  # each masker measured once


def test_report_names_the_choice_and_its_regret_from_the_rows(selection_run):
    _, _, out = selection_run
    rows = summary_rows(ResultStore(out).rows())
    report, _ = cell_report(rows)
    scores = {r["candidate"]: r["selection_score"] for r in rows}
    tests = {r["candidate"]: r["test_auroc"] for r in rows}
    assert scores[report.chosen] == max(scores.values())
    assert report.regret == pytest.approx(max(tests.values()) - tests[report.chosen])
    text, paths = build_report(out, figures=False)
    assert "## Detector selection -- synthetic, profile smoke" in text
    assert f"| washer | 0 | {report.chosen} | {tests[report.chosen]:.3f} |" in text
    assert (out / "report.md").read_text() == text and out / "report.md" in paths


def test_rerun_skips_every_finished_candidate(selection_run):
    cfg, _, out = selection_run
    again = run_table(cfg, registry=registry(), log=lambda _: None)
    assert again.computed == 0 and again.skipped == 2 * len(SCORE_NAMES)


def test_a_held_lock_is_refused_without_waiting(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path):
        with pytest.raises(BlockingIOError):
            with file_lock(path, wait=False):
                pass
    with file_lock(path, wait=False) as fd:  # released when the block ends
        assert fd >= 0
