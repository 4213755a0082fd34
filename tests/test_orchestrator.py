"""One orchestrator: `fader-kit evaluate` and `fader-kit bench` give the same row for the same
settings, and seeds are reported with spread and a paired interval (smoke profile)."""
import json

import pytest

from fader_kit.cli.main import main, parse_seeds
from fader_kit.engine.store import ResultStore


@pytest.fixture(scope="module")
def both(tmp_path_factory, smoke_ears):
    ev = tmp_path_factory.mktemp("evaluate")
    be = tmp_path_factory.mktemp("bench")
    for folder in (ev, be):  # the same EAR U-Nets, trained once per session: the heads are trained here
        smoke_ears(folder, (0, 1))
    common = ["--data", "synthetic", "--profile", "smoke", "--seeds", "0,1", "--quiet", "--fused", "sum"]
    # table3's "ours" is the paper's head: evaluate runs it with --fader-variant paper
    assert main(["evaluate", "--category", "washer", "--fader-variant", "paper", "--out", str(ev), *common]) == 0
    assert main(["bench", "table3", "--categories", "washer", "--variants", "ear,ours", "--figures", "0",
                 "--no-report", "--out", str(be), *common]) == 0
    return json.loads((ev / "metrics.json").read_text()), ResultStore.open_existing(be).rows(), be


def test_evaluate_and_bench_give_the_same_rows(both):
    metrics, rows, _ = both
    by = {(r.unit.variant, r.unit.seed): r for r in rows}
    assert len(rows) == 4 and all(r.status == "ok" for r in rows)
    for seed_row in metrics["per_seed"]:
        s = seed_row["seed"]
        for ours, variant in (("ear", "ear"), ("fader", "ours")):
            r = by[(variant, s)]
            assert seed_row[ours]["image_auroc"] == r.image_auroc, (ours, s)
            assert seed_row[ours]["pixel_auroc"] == r.pixel_auroc, (ours, s)
        # the masker alone is reported beside them, from the same masks
        assert seed_row["masker_alone"]["image_auroc"] == by[("ear", s)].config["masker_alone"]["image_auroc"]


def test_seeds_give_spread_and_a_paired_interval(both):
    metrics, _, _ = both
    assert metrics["seeds"] == [0, 1] and len(metrics["per_seed"]) == 2
    ear = [r["ear"]["image_auroc"] for r in metrics["per_seed"]]
    assert metrics["ear"]["image_auroc"] == pytest.approx(sum(ear) / 2)
    assert metrics["spread"]["ear"]["image_auroc"]["n"] == 2
    assert ear[0] != ear[1]  # two seeds really are two trainings
    for key in ("image_auroc", "pixel_auroc"):
        c = metrics["comparison"][key]
        assert c["seeds"] == 2 and c["ci_low"] <= c["delta_mean"] <= c["ci_high"]
        assert c["verdict"] in ("gain", "loss", "no difference")
        # pixel AUROC inside the bootstrap is binned (ties within a bin): equal to ~1e-3
        assert c["delta_mean"] == pytest.approx(metrics["fader"][key] - metrics["ear"][key], abs=1e-3)


def test_seed_lists_parse_and_bad_ones_name_the_argument():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("0-2") == (0, 1, 2) and parse_seeds("3") == (3,)
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a,b")
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("1,1")


def test_bench_report_gives_seed_spread_and_the_paired_interval(both):
    import csv

    from fader_kit_bench.report import build_report

    _, rows, folder = both
    text, paths = build_report(folder, figures=False)
    assert "Seeds and intervals" in text
    (cmp_path,) = [p for p in paths if p.name == "comparisons.csv"]
    lines = {line["variant"]: line for line in csv.DictReader(cmp_path.open())}
    assert set(lines) == {"ours", "ours+masker", "ear+masker"}  # the fused scores get their own lines
    line = lines["ours"]
    assert line["seeds"] == "2"
    assert float(line["delta_image_auroc_ci_low"]) <= float(line["delta_image_auroc"]) <= float(line["delta_image_auroc_ci_high"])
    assert line["verdict_image_auroc"] in ("gain", "loss", "no difference")
    ear = [r.image_auroc for r in rows if r.unit.variant == "ear"]
    assert float(line["ear_image_auroc_mean"]) == pytest.approx(sum(ear) / len(ear))
    # against the better of EAR and the masker alone: the baseline named is the one with the higher mean
    ear_mean, alone_mean = float(line["ear_image_auroc_mean"]), float(line["alone_image_auroc_mean"])
    assert line["best_baseline_image_auroc"] == ("EAR" if ear_mean >= alone_mean else "masker alone")
    assert float(line["delta_best_image_auroc"]) == pytest.approx(
        float(line["after_image_auroc_mean"]) - max(ear_mean, alone_mean), abs=1e-3)
    assert "## Variants over every cell" in text


def test_fused_score_is_reported_by_both_commands_and_paired_against_ear(both):
    metrics, rows, _ = both
    by = {(r.unit.variant, r.unit.seed): r for r in rows}
    for seed_row in metrics["per_seed"]:
        s = seed_row["seed"]
        assert seed_row["ear_fused"] == by[("ear", s)].config["fused"]
        assert seed_row["fader_fused"] == by[("ours", s)].config["fused"]
        # fusing adds the masker's map: the result is not the reconstruction's own number
        assert seed_row["ear_fused"]["image_auroc"] != seed_row["ear"]["image_auroc"]
    for name in ("ear_fused", "fader_fused"):
        c = metrics["fused_comparison"][name]["image_auroc"]
        assert c["before_mean"] == pytest.approx(metrics["ear"]["image_auroc"], abs=1e-3)
        assert c["after_mean"] == pytest.approx(metrics[name]["image_auroc"], abs=1e-3)


def test_the_report_needs_the_results_folder_alone(both, tmp_path):
    """Intervals come from the score details beside the rows: without the compute cache the report
    gives the same intervals."""
    import shutil

    from fader_kit_bench.report import build_report

    _, _, folder = both
    copy = tmp_path / "results"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("cache"))
    assert not (copy / "cache").exists()
    with_cache, _ = build_report(folder, figures=False)
    alone, _ = build_report(copy, figures=False)
    assert "No interval" not in alone  # every row found its details
    lines = [line for line in alone.splitlines() if line.startswith("| patch_stats | ours |")]
    assert lines and all(any(v in line for v in ("no difference", "gain", "loss")) for line in lines)
    assert [line for line in with_cache.splitlines() if line.startswith("| patch_stats | ours |")] == lines
