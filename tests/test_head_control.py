"""The control variant (`open_gates`: FADeR's training with every skip open) and the report's
comparisons against it and against the better of EAR and the masker alone (smoke profile)."""
import csv

import pytest

from fader_kit.cli.main import main
from fader_kit_bench.report import build_report
from fader_kit.engine.store import ResultStore


@pytest.fixture(scope="module")
def grid(tmp_path_factory, smoke_ears):
    out = tmp_path_factory.mktemp("control")
    smoke_ears(out, (0, 1))
    assert main(["bench", "fader_head", "--data", "synthetic", "--profile", "smoke", "--categories", "washer",
                 "--variants", "ear,fader,open_gates", "--seeds", "0,1", "--figures", "0", "--no-report", "--quiet",
                 "--out", str(out)]) == 0
    return out, ResultStore.open_existing(out).rows()


def test_open_gates_keeps_every_skip_open_and_still_trains(grid):
    _, rows = grid
    by = {(r.unit.variant, r.unit.seed): r for r in rows}
    for seed in (0, 1):
        head = by[("open_gates", seed)].config["diagnostics"]["head"]
        assert head["gate_unmasked_defect"] == head["gate_normal_defective"] == head["gate_normal_images"] == 1.0
        assert head["closed_normal_images"] == 0.0
        # the decoder was fine-tuned: not the EAR row again
        assert by[("open_gates", seed)].pixel_auroc != by[("ear", seed)].pixel_auroc
        # the paper's min-max closes a patch on every image
        assert by[("fader", seed)].config["diagnostics"]["head"]["closed_normal_images"] == 1.0


def test_report_compares_the_head_with_its_control(grid):
    out, rows = grid
    text, paths = build_report(out, figures=False)
    (cmp_path,) = [p for p in paths if p.name == "comparisons.csv"]
    lines = {line["variant"]: line for line in csv.DictReader(cmp_path.open())}
    fader, ctl = lines["fader"], lines["open_gates"]
    assert fader["delta_control_image_auroc"] and not ctl["delta_control_image_auroc"]  # no control for itself
    assert float(fader["delta_control_image_auroc"]) == pytest.approx(
        float(fader["after_image_auroc_mean"]) - float(ctl["after_image_auroc_mean"]), abs=1e-3)
    lo, hi = float(fader["delta_control_image_auroc_ci_low"]), float(fader["delta_control_image_auroc_ci_high"])
    assert lo <= float(fader["delta_control_image_auroc"]) <= hi
    summary = text[text.index("## Variants over every cell"):]
    assert "| fader_head | fader | 1 |" in summary and "vs `open_gates`" in summary
