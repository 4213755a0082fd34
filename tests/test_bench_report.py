"""``fader-kit report``: Markdown and CSV from a hand-made results file, checked line by line."""
from __future__ import annotations

import csv

import pytest

from fader_kit_bench.report import build_report
from fader_kit.engine.store import ResultRow, ResultStore, UnitId
from fader_kit.cli.main import main


def row(table, data, masker, variant, category, image=None, pixel=None, *, status="ok", reason=None,
        weights="none", seed=0, timings=None):
    unit = UnitId(table=table, data=data, profile="cpu", masker=masker, variant=variant, category=category, seed=seed)
    return ResultRow(unit=unit, status=status, reason=reason, work_key=f"{table}{masker}{variant}{category}{seed}",
                     image_auroc=image, pixel_auroc=pixel, weights=weights, device="cpu",
                     timings=timings or {"fader_train": 30.0, "evaluate": 6.0},
                     environment={"fader_kit": "0.1.0", "torch": "2.x", "python": "3.11"})


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path)
    mv = "mvtec:/data/mvtec"
    for r in [
        # table 2 on MVTec (one category): the paper's own numbers sit beside ours
        row("table2", mv, "dino_vit", "ear", "bottle", 0.9, 0.8, weights="hub:vit_small_patch16_224.dino"),
        row("table2", mv, "dino_vit", "fader", "bottle", 0.95, 0.85, weights="hub:vit_small_patch16_224.dino"),
        # table 2 on synthetic data: a random-init masker, a failed masker, two seeds averaged
        row("table2", "synthetic", "dino_vit", "ear", "washer", 0.5, 0.6, weights="random-init"),
        row("table2", "synthetic", "dino_vit", "fader", "washer", 0.75, 0.7, weights="random-init"),
        row("table2", "synthetic", "dino_vit", "ear", "washer", 0.7, 0.6, weights="random-init", seed=1),
        row("table2", "synthetic", "dino_vit", "fader", "washer", 0.85, 0.8, weights="random-init", seed=1),
        row("table2", "synthetic", "winclip", "ear", "washer", status="failed", reason="MissingWeightsError: no weights",
            weights=None),
        row("table2", "synthetic", "winclip", "fader", "washer", status="failed", reason="MissingWeightsError: no weights",
            weights=None),
        # table 3 on MVTec: columns per variant, the paper's image AUROC beside ours
        row("table3", mv, "dino_vit", "ear", "bottle", 0.9, 0.8),
        row("table3", mv, "dino_vit", "ours", "bottle", 0.95, 0.85),
        row("table3", mv, "dino_vit", "sigmoid", "bottle", 0.925, 0.825),
        # table 5 on VisA: the paper reports FADeR's image AUROC only
        row("table5", "visa:/data/visa", "patch_stats", "ear", "candle", 0.8, 0.9),
        row("table5", "visa:/data/visa", "patch_stats", "fader", "candle", 0.85, 0.95),
    ]:
        store.put(r)
    return tmp_path


def _section(text: str, heading_start: str) -> list[str]:
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(heading_start))
    j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("### ")), len(lines))
    return lines[i:j]


def test_table2_on_mvtec_puts_the_paper_beside_ours(results):
    text, _ = build_report(results, figures=False)
    sec = _section(text, "### Table 2: FADeR on three pre-trained attentions (image / pixel AUROC) -- mvtec:/data/mvtec")
    assert sec[0].endswith("-- mvtec:/data/mvtec, cpu profile, seed 0")
    assert sec[2:8] == [
        "| Category | dino_vit: ours | paper |",
        "|---|---|---|",
        "| Bottle | 0.900 / 0.800 -> 0.950 / 0.850 | 0.997 / 0.914 -> 0.998 / 0.951 |",
        "| Average | 0.900 / 0.800 -> 0.950 / 0.850 | 0.997 / 0.914 -> 0.998 / 0.951 |",
        "| Change | +0.050 / +0.050 | +0.001 / +0.037 |",
        "",
    ]
    assert "Maskers and weights: dino_vit: hub:vit_small_patch16_224.dino" in sec
    assert "†" not in "\n".join(sec)


def test_table2_on_synthetic_marks_random_init_failures_and_the_paper_average(results):
    text, _ = build_report(results, figures=False)
    sec = _section(text, "### Table 2: FADeR on three pre-trained attentions (image / pixel AUROC) -- synthetic")
    assert sec[0].endswith("-- synthetic, cpu profile, seeds 0, 1")
    assert sec[2:7] == [
        "| Category | dino_vit [random-init]: ours | paper | winclip: ours | paper |",
        "|---|---|---|---|---|",
        "| washer | 0.600 / 0.600 -> 0.800 / 0.750 | -- | failed | -- |",
        "| Average | 0.600 / 0.600 -> 0.800 / 0.750 | 0.942 / 0.902 -> 0.964 / 0.938 † | -- / -- -> -- / -- (0/1 categories) "
        "| 0.892 / 0.859 -> 0.917 / 0.889 † |",
        "| Change | +0.200 / +0.150 | +0.022 / +0.036 † | -- / -- | +0.025 / +0.030 † |",
    ]
    assert "† The paper's MVTec AD average, shown for scale: the paper has no numbers for synthetic categories." in sec
    assert "Maskers and weights: dino_vit: random-init; winclip: unknown (no finished row)" in sec
    assert "Failed units (2):" in sec
    assert "- winclip/ear on washer: seed 0: MissingWeightsError: no weights" in sec
    assert any(line.startswith("Compute time in these rows: 2.4 min (fader_train 2.0, evaluate 0.4 min).") for line in sec)


def test_table3_and_table5_layouts(results):
    text, _ = build_report(results, figures=False)
    t3 = _section(text, "### Table 3: ablation")
    assert t3[2:6] == [
        "| Category | EAR (hard, image) | paper | +MLP, soft, nearest (ours) | paper | +MLP, soft (sigmoid), nearest |",
        "|---|---|---|---|---|---|",
        "| Bottle | 0.900 / 0.800 | 0.997 | 0.950 / 0.850 | 0.998 | 0.925 / 0.825 |",
        "| Average | 0.900 / 0.800 | 0.997 | 0.950 / 0.850 | 0.998 | 0.925 / 0.825 |",
    ]
    t5 = _section(text, "### Table 5: VisA")
    assert t5[2:7] == [
        "| Category | patch_stats: ours | paper |",
        "|---|---|---|",
        "| Candle | 0.800 / 0.900 -> 0.850 / 0.950 | -> 0.927 |",
        "| Average | 0.800 / 0.900 -> 0.850 / 0.950 | -> 0.927 |",
        "| Change | +0.050 / +0.050 | -- |",
    ]


def test_csv_files_hold_every_row_and_the_paper_numbers(results):
    _, paths = build_report(results, figures=False)
    names = {p.name for p in paths}
    assert {"report.md", "report.csv", "results.csv"} <= names
    raw = list(csv.DictReader((results / "results.csv").open()))
    assert len(raw) == 13 and {r["status"] for r in raw} == {"ok", "failed"}
    cells = list(csv.DictReader((results / "report.csv").open()))
    bottle = [c for c in cells if c["table"] == "table2" and c["category"] == "bottle" and c["variant"] == "fader"][0]
    assert (bottle["image_auroc"], bottle["paper_image_auroc"], bottle["paper_pixel_auroc"]) == ("0.95", "0.998", "0.951")
    washer = [c for c in cells if c["masker"] == "winclip" and c["variant"] == "ear"][0]
    assert washer["status"] == "failed" and washer["paper_image_auroc"] == ""  # no paper numbers for synthetic


def test_report_command_writes_a_bar_chart(results, capsys):
    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| Bottle | 0.900 / 0.800 -> 0.950 / 0.850 | 0.997 / 0.914 -> 0.998 / 0.951 |" in out
    png = results / "figures" / "table2" / "synthetic-cpu" / "before_after.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_an_empty_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no benchmark results in" in err and "Traceback" not in err
