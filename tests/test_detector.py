"""Deployment: ``fader-kit fit`` / ``predict`` / ``export`` of a detector folder, on generated images.

One tiny detector (32 px, one epoch each) is fitted once per module and shared; each test copies
what it changes.  Covered: save/load round trip, calibration maths against hand-computed values,
unreadable, grayscale and RGBA files, an empty folder, missing files and a format mismatch in the
folder, resuming, threshold overrides, ONNX parity of decisions.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fader_kit.deploy.thresholds import (PixelQuantiles, calibrate, calibration_from, f1_threshold, false_alarm_rate,
                                   order_threshold)
from fader_kit.cli.main import main
from fader_kit.deploy.detector import Detector, make_decision
from fader_kit.errors import ConfigError, ModelDirError
from fader_kit.deploy.fit import fit_detector, holdout_split
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT

from deploy_cases import TINY, part


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    rng = np.random.default_rng(0)
    (root / "normal" / "sub").mkdir(parents=True)
    for i in range(12):  # one in a sub-folder: the folder is searched recursively
        Image.fromarray(part(rng)).save(root / "normal" / ("sub" if i == 0 else "") / f"good{i:02d}.png")
    (root / "new").mkdir()
    Image.fromarray(part(rng)).save(root / "new" / "a_good.png")
    Image.fromarray(part(rng, defect=True)).save(root / "new" / "b_defect.png")
    Image.fromarray(part(rng)[:, :, 0], "L").save(root / "new" / "c_gray.png")
    rgba = np.concatenate([part(rng), np.full((40, 48, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "new" / "d_rgba.png")
    (root / "new" / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def fitted(data: Path) -> tuple[Path, Detector]:
    out = data / "model"
    det = fit_detector(data / "normal", masker="patch_stats", profile=TINY, out=out, head_variant=DEFAULT_HEAD_VARIANT,
                       seed=0, false_alarm_rate=0.2, log=lambda _: None)
    return out, det


@pytest.fixture(scope="module")
def model_dir(fitted: tuple[Path, Detector]) -> Path:
    return fitted[0]


# -- calibration maths -----------------------------------------------------------------------------
def test_order_threshold_and_rate_by_hand() -> None:
    scores = np.arange(1.0, 21.0)  # 1..20
    assert order_threshold(scores, 0.1) == 19.0  # k = ceil(0.9 * 21) = 19: one of twenty above
    assert false_alarm_rate(scores, 19.0) == pytest.approx(0.05)
    assert order_threshold(scores, 0.01) == 20.0  # below 1/(N + 1): the maximum
    assert order_threshold(scores, 0.5) == 11.0


def test_calibration_normalises_threshold_to_half_and_rederives() -> None:
    pixels = PixelQuantiles(rates=[0.5, 0.1, 0.01, 0.0], values=[1.0, 2.0, 3.0, 4.0])
    cal = calibration_from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], pixels, 100, 0.2)
    assert cal.image_threshold == pytest.approx(0.9)  # k = ceil(0.8 * 11) = 9: the ninth score
    assert cal.normal_false_alarm_rate == pytest.approx(0.1)
    assert cal.normalise(cal.image_threshold) == pytest.approx(0.5)
    assert cal.normalise(cal.low) == pytest.approx(0.0)
    assert cal.normalise(0.45) == pytest.approx(0.5 + 0.5 * (0.45 - 0.9) / 0.8)
    w = (np.log(0.5) - np.log(0.2)) / (np.log(0.5) - np.log(0.1))  # 0.2 lies between the stored 0.5 and 0.1
    assert cal.pixel_threshold == pytest.approx(1.0 + w * (2.0 - 1.0))
    assert cal.pixel_low == 1.0
    assert pixels.at(0.1) == 2.0 and pixels.at(0.01) == 3.0 and pixels.at(0.001) == 4.0
    assert pixels.at(np.sqrt(0.1 * 0.01)) == pytest.approx(2.5)  # log-interpolated half way
    lower = cal.with_rate(0.05)
    assert lower.image_threshold == 1.0 and lower.warnings  # 0.05 < 1/11: the max, with a warning
    assert not cal.warnings


def test_calibrate_from_maps_counts_images_and_pixels() -> None:
    maps = torch.zeros(6, 1, 4, 4)
    for i in range(6):
        maps[i, 0, 1, 2] = i + 1.0
    cal = calibrate(maps, 0.2)
    assert cal.n_images == 6 and cal.n_pixels == 96
    assert cal.normal_scores == [1, 2, 3, 4, 5, 6] and cal.image_threshold == 6.0  # ceil(0.8 * 7) = 6


def test_f1_threshold_separates_by_hand() -> None:
    t, f1 = f1_threshold(np.array([0.1, 0.2, 0.3, 0.7, 0.8]), np.array([0, 0, 0, 1, 1]))
    assert f1 == 1.0 and 0.3 < t < 0.7


def test_holdout_split_is_seeded_and_refuses_too_few() -> None:
    train, held = holdout_split(40, 0.15, seed=3)
    assert len(held) == 6 and sorted(train + held) == list(range(40))
    assert holdout_split(40, 0.15, seed=3) == (train, held)
    assert len(holdout_split(12, 0.15, seed=0)[1]) == 5  # at least five
    with pytest.raises(ConfigError, match="folder_x.*at least 10"):
        holdout_split(9, 0.15, seed=0, folder="folder_x")


# -- fit, save, load, predict ----------------------------------------------------------------------
def test_round_trip_scores_equal_after_load(fitted: tuple[Path, Detector], data: Path) -> None:
    model_dir, in_memory = fitted
    files = sorted(str(p) for p in (data / "new").glob("[abcd]_*.png"))
    det = Detector.load(model_dir)
    before = in_memory.predict(files)
    manifest = json.loads((model_dir / "detector.json").read_text())
    assert manifest["format_version"] == 3 and manifest["settings"]["score"] == "fader" and manifest["settings"]["fader_variant"] == DEFAULT_HEAD_VARIANT
    assert manifest["training"]["n_holdout"] == 5 and manifest["training"]["n_train"] == 7
    assert "fader_kit" in manifest["environment"] and (model_dir / "README.md").read_text().startswith("# fader-kit")
    first = det.predict(files)
    assert [p.score for p in first] == [p.score for p in before]  # fit -> save -> load changes nothing
    assert [p.anomalous for p in first] == [p.anomalous for p in before]
    assert all(torch.equal(a.anomaly_map, b.anomaly_map) for a, b in zip(first, before))
    assert all(p.anomaly_map.shape == (32, 32) and p.mask.dtype == torch.bool for p in first)
    # held-out normal images reproduce the stored calibration scores
    held = [str(data / "normal" / f) for f in manifest["training"]["holdout_files"]]
    scores = [p.score for p in det.predict(held)]
    assert np.allclose(sorted(scores), sorted(det.calibration.normal_scores), atol=1e-5)
    # PIL images and arrays are converted as files are
    pil = det.predict([Image.open(files[2]), np.asarray(Image.open(files[3]))])
    assert pil[0].score == pytest.approx(first[2].score) and pil[1].score == pytest.approx(first[3].score)
    single = det.predict(files[1])  # one path, not a sequence of characters
    assert len(single) == 1 and single[0].source == files[1]
    assert single[0].score == pytest.approx(first[1].score, abs=1e-5)  # batch of one: other kernels, same value


def test_threshold_override_changes_decisions(model_dir: Path, data: Path) -> None:
    det = Detector.load(model_dir)
    files = sorted(str(p) for p in (data / "new").glob("[abcd]_*.png"))
    raw = [p.score for p in det.predict(files)]  # --threshold is a raw image score
    assert all(p.anomalous for p in det.predict(files, threshold=min(raw) - 1e-6))
    assert not any(p.anomalous for p in det.predict(files, threshold=max(raw)))
    mid = sorted(raw)[1]
    got = [p.anomalous for p in det.predict(files, threshold=mid)]
    assert got == [r > mid for r in raw] and any(got) and not all(got)
    with pytest.raises(ConfigError, match="f1"):
        make_decision(det.calibration, "f1")


def test_cli_predict_corrupt_gray_rgba_and_resume(model_dir: Path, data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pred"
    rc = main(["predict", str(model_dir), str(data / "new"), "--out", str(out), "--quiet", "--maps", "all"])
    assert rc == 3  # some files unreadable
    err = capsys.readouterr().err
    assert "e_corrupt.png" in err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["path"]).name for r in rows] == ["a_good.png", "b_defect.png", "c_gray.png", "d_rgba.png",
                                                    "e_corrupt.png"]
    bad = rows[-1]
    assert bad["error"] and not bad["score"]
    good = rows[:-1]
    assert all(r["score"] and not r["error"] for r in good)
    assert {(r["width"], r["height"]) for r in good} == {("48", "40")}
    assert all((out / r["overlay"]).is_file() for r in good)  # --maps all
    # rerun: nothing predicted twice; the failed file is retried (and fails again)
    rc = main(["predict", str(model_dir), str(data / "new"), "--out", str(out), "--quiet", "--maps", "all"])
    assert rc == 3
    rows2 = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["path"] for r in rows2) == sorted(r["path"] for r in rows)
    assert "skipped 4 already" in capsys.readouterr().out
    # a rerun with another threshold is refused instead of mixing rows
    assert main(["predict", str(model_dir), str(data / "new"), "--out", str(out), "--quiet", "--threshold", "0.9",
                 "--maps", "all"]) == 2
    assert "another image_threshold and threshold" in capsys.readouterr().err


def test_output_folder_inside_the_input_folder_is_not_read_back(model_dir: Path, data: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(data / "new", inputs)
    (inputs / "e_corrupt.png").unlink()
    for _ in range(2):
        assert main(["predict", str(model_dir), str(inputs), "--out", str(inputs / "results"), "--quiet",
                     "--maps", "all"]) == 0
    rows = list(csv.DictReader(open(inputs / "results" / "predictions.csv")))
    assert len(rows) == 4 and not any("results" in r["path"] for r in rows)


def test_cli_predict_all_readable_exits_zero(model_dir: Path, data: Path, tmp_path: Path) -> None:
    rc = main(["predict", str(model_dir), str(data / "new" / "a_good.png"), str(data / "new" / "b_*.png"),
               "--out", str(tmp_path / "p"), "--quiet"])
    assert rc == 0
    assert len(list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))) == 2


def test_empty_folder_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    rc = main(["fit", "--normal", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), "--profile", "smoke"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0] and "no images" in err[0]


def test_model_dir_missing_file_and_format_mismatch(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "masker.safetensors").unlink()
    with pytest.raises(ModelDirError, match="masker.safetensors"):
        Detector.load(broken)
    future = tmp_path / "future"
    shutil.copytree(model_dir, future)
    manifest = json.loads((future / "detector.json").read_text())
    manifest["format_version"] = 99
    (future / "detector.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="version 99.*upgrade fader-kit"):
        Detector.load(future)
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    with open(tampered / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelDirError, match="checksum"):
        Detector.load(tampered)
    with pytest.raises(ModelDirError, match="detector.json"):
        Detector.load(tmp_path)


def test_onnx_export_gives_the_same_decisions(model_dir: Path, data: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "det.onnx"
    assert main(["export", "--onnx", str(onnx_path), str(model_dir)]) == 0
    new = str(data / "new")
    assert main(["predict", str(model_dir), new, "--out", str(tmp_path / "t"), "--quiet", "--maps", "none"]) == 3
    assert main(["predict", "--onnx", str(onnx_path), new, "--out", str(tmp_path / "o"), "--quiet"]) == 3
    torch_rows = list(csv.DictReader(open(tmp_path / "t" / "predictions.csv")))
    onnx_rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert [r["decision"] for r in torch_rows] == [r["decision"] for r in onnx_rows]
    assert {"anomalous", "normal"} <= {r["decision"] for r in torch_rows}  # both outcomes are compared
    for a, b in zip(torch_rows, onnx_rows):
        if a["score"]:
            assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-4)


def test_predict_time_false_alarm_rate_rederives_the_threshold(model_dir: Path, data: Path) -> None:
    det = Detector.load(model_dir)
    files = sorted(str(p) for p in (data / "new").glob("[abcd]_*.png"))
    loose = det.calibration.with_rate(0.5)
    assert loose.image_threshold == order_threshold(det.calibration.normal_scores, 0.5)
    assert loose.image_threshold < det.calibration.image_threshold
    preds = det.predict(files, false_alarm_rate=0.5)
    assert [p.anomalous for p in preds] == [p.score > loose.image_threshold for p in preds]
    assert [p.normalised_score > 0.5 for p in preds] == [p.anomalous for p in preds]  # 0.5 moves with the rate


def test_cli_fit_prints_thresholds_and_writes_the_folder(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("fader_kit.model.config.get_profile", lambda name: TINY)
    out = tmp_path / "m"
    assert main(["fit", "--normal", str(data / "normal"), "--out", str(out), "--quiet", "--false-alarm-rate", "0.2",
                 "--score", "fader", "--masker", "patch_stats"]) == 0
    text = capsys.readouterr().out
    assert "rests on 5 held-out normal images" in text and "detector written to" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "calibration.json", "detector.json", "masker.json", "masker.safetensors", "model.safetensors"])
    assert not list(out.glob("*.pt")) and not list(out.glob(".*tmp"))  # no pickle, no leftovers


def test_export_refuses_a_masker_without_a_module_by_name(model_dir: Path) -> None:
    from types import SimpleNamespace

    from fader_kit.deploy.export import detector_graph
    from fader_kit.model.onnx_export import ExportError
    from fader_kit.maskers.interfaces import Masker

    class Opaque(Masker):
        def score_map(self, images):
            return images[:, :1]

    det = Detector.load(model_dir)
    fake = SimpleNamespace(masker=Opaque(), settings=det.settings.model_copy(update={"masker": "opaque_one"}),
                           model=det.model, image_size=det.image_size)
    with pytest.raises(ExportError, match="'opaque_one' cannot be exported"):
        detector_graph(fake)


def test_state_files_round_trip_nested_state_and_refuse_objects(tmp_path: Path) -> None:
    from fader_kit.deploy.statefiles import load_state, save_state

    state = {"threshold": 0.5, "grid": (4, 4), "modules": {"net": {"w": torch.arange(6.0).reshape(2, 3)}},
             "extra": [torch.ones(2), {"k": None, "inf": float("inf")}]}
    save_state(state, tmp_path / "s.json", tmp_path / "s.safetensors", meta={"masker": "x"})
    back, meta = load_state(tmp_path / "s.json", tmp_path / "s.safetensors")
    assert meta == {"masker": "x"} and back["grid"] == [4, 4] and back["extra"][1] == {"k": None, "inf": float("inf")}
    assert torch.equal(back["modules"]["net"]["w"], state["modules"]["net"]["w"])
    assert torch.equal(back["extra"][0], torch.ones(2))
    with pytest.raises(TypeError, match="modules/obj is a object"):
        save_state({"modules": {"obj": object()}}, tmp_path / "t.json", tmp_path / "t.safetensors")


def test_a_head_that_reads_the_masker_score_fits_saves_and_predicts(data: Path, tmp_path: Path) -> None:
    """score_gates reads the masker's score map: fit gives it to the training, and the loaded detector
    computes it at predict time (before, both stopped with "pass scores=")."""
    det = fit_detector(data / "normal", masker="patch_stats", profile=TINY, out=tmp_path / "sg", head_variant="score_gates",
                       seed=0, log=lambda _: None)
    assert det.model.needs_scores
    images = [data / "new" / name for name in ("a_good.png", "b_defect.png", "c_gray.png", "d_rgba.png")]
    before = [p.score for p in det.predict(images)]
    after = [p.score for p in Detector.load(tmp_path / "sg").predict(images)]
    assert len(before) == 4 and before == pytest.approx(after, abs=1e-6) and all(np.isfinite(before))
