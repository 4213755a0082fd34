"""The probes are job kinds: their rows go into the results folder's store, a rerun resumes, and
their tables are made from the store (smoke profile, synthetic washer)."""
from __future__ import annotations

import pytest

from fader_kit.engine.store import ResultStore
from fader_kit_bench import fusion_probe, head_probe
from fader_kit_bench.fusion_probe import FusionProbeFacts
from fader_kit_bench.head_probe import HeadProbeFacts


@pytest.mark.slow
def test_head_probe_rows_are_in_the_store_and_a_rerun_resumes(tmp_path, smoke_ears, capsys):
    smoke_ears(tmp_path, (0,))
    argv = ["--data", "synthetic", "--category", "washer", "--profile", "smoke", "--variants", "paper",
            "--out", str(tmp_path)]
    assert head_probe.main(argv) == 0
    rows = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert set(rows) == {head_probe.ORACLE, "paper"} and all(r.unit.table == "head_probe" for r in rows.values())
    oracle, paper = HeadProbeFacts.of(rows[head_probe.ORACLE]), HeadProbeFacts.of(rows["paper"])
    assert (oracle.rho_own, oracle.target) == (1.0, "ear") and rows[head_probe.ORACLE].image_auroc is None
    assert -1 <= paper.rho_own <= 1 and 0 <= rows["paper"].image_auroc <= 1 and paper.gate_missed is not None
    capsys.readouterr()
    assert head_probe.main(argv) == 0
    assert "0 computed, 0 copied, 2 skipped" in capsys.readouterr().out
    assert "| paper | gated |" in (tmp_path / "head_probe.md").read_text()


@pytest.mark.slow
def test_fusion_probe_pairs_stored_details_over_seeds(tmp_path, smoke_ears):
    smoke_ears(tmp_path, (0, 1))
    argv = ["--data", "synthetic", "--category", "washer", "--masker", "patch_stats", "--profile", "smoke",
            "--seeds", "0,1", "--variants", "ear", "--out", str(tmp_path)]
    assert fusion_probe.main(argv) == 0
    store = ResultStore(tmp_path)
    rows = sorted(store.rows(), key=lambda r: r.unit.seed)
    assert [r.unit.seed for r in rows] == [0, 1] and set(FusionProbeFacts.of(rows[0]).weights) == set(fusion_probe.RULES)
    lines = fusion_probe.compare(rows, store.details)
    assert [c["rule"] for c in lines] == list(fusion_probe.RULES)
    for c in lines:  # the paired interval holds its own mean, and both maps alone are in [0, 1]
        assert c["ci_better"][0] <= c["delta_better"] <= c["ci_better"][1]
        assert 0 <= c["model_alone"] <= 1 and 0 <= c["masker_alone"] <= 1 and len(c["weights"]) == 2
    assert (tmp_path / "fusion_probe.md").read_text().count("| patch_stats | ear |") == len(fusion_probe.RULES)
