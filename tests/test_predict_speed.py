"""The fast paths of predict: the int8 graph and its reported parity, overlays only where asked,
the parity arithmetic, and the benchmark's report (engines, machine, parity lines)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fader_kit.cli.main import main
from fader_kit.deploy.fit import fit_detector
from fader_kit.deploy.quantize import score_parity
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT

from deploy_cases import TINY, write_parts


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("speed")
    write_parts(root / "normal", 12, seed=4)
    fit_detector(root / "normal", masker="patch_stats", profile=TINY, out=root / "model",
                 head_variant=DEFAULT_HEAD_VARIANT, seed=0, false_alarm_rate=0.2, log=lambda _: None)
    return root / "model", root / "normal"


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_parity_counts_decisions_that_cross_the_threshold() -> None:
    result = score_parity(np.array([0.1, 0.5, 0.9, 0.6]), np.array([0.1, 0.55, 0.7, 0.4]), threshold=0.52)
    assert (result.n_images, result.decisions_changed) == (4, 2)  # 0.5 -> 0.55 and 0.6 -> 0.4 cross 0.52
    assert result.max_abs_diff == pytest.approx(0.2) and result.mean_abs_diff == pytest.approx(0.1125)
    assert "2 decision(s) changed" in result.summary()
    with pytest.raises(ValueError, match="equal"):
        score_parity(np.array([0.1]), np.array([0.1, 0.2]), 0.5)


def test_int8_export_reports_its_parity_and_predicts(fitted: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    model, normal = fitted
    q = tmp_path / "q.onnx"
    assert main(["export", "--onnx", str(q), str(model), "--int8"]) == 0
    text = capsys.readouterr().out
    assert "int8 graph (U-Net convolutions) vs the torch detector on" in text and "decision(s) changed" in text
    assert main(["predict", "--onnx", str(q), str(normal), "--out", str(tmp_path / "q"), "--quiet", "--maps", "none"]) == 0
    assert main(["predict", str(model), str(normal), "--out", str(tmp_path / "t"), "--quiet", "--maps", "none"]) == 0
    got, ref = rows(tmp_path / "q"), rows(tmp_path / "t")
    assert [r["path"] for r in got] == [r["path"] for r in ref]
    diffs = [abs(float(a["score"]) - float(b["score"])) for a, b in zip(got, ref)]
    assert max(diffs) < 0.2  # int8 moves scores, loosely bounded (the export prints the measured numbers)


def test_int8_applies_to_detector_folders_only(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    assert main(["export", "--onnx", str(tmp_path / "x.onnx"), str(ckpt), "--int8"]) == 2


@pytest.mark.parametrize("maps, expected", [("none", 0), ("all", 12)])
def test_overlays_are_drawn_only_where_asked(fitted: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            maps: str, expected: int) -> None:
    import fader_kit.deploy.predict as predicting

    calls: list[int] = []
    real = predicting.overlay
    monkeypatch.setattr(predicting, "overlay", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, normal = fitted
    assert main(["predict", str(model), str(normal), "--out", str(tmp_path / "o"), "--quiet", "--maps", maps]) == 0
    assert len(calls) == expected == len(list((tmp_path / "o" / "maps").glob("*.png")) if expected else [])


def test_the_benchmark_reports_machine_engines_and_parity(fitted: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    from fader_kit.deploy.speed import main as speed

    model, _ = fitted
    assert speed([str(model), "--images", "6", "--threads", "1", "--workers", "1", "--engine", "torch,onnx"]) == 0
    out = capsys.readouterr().out
    assert out.count("CPU: ") == 2 and "load average" in out
    assert "1 torch thread(s)" in out and "1 onnxruntime thread(s)" in out and "images/s" in out
    assert "onnx vs torch on 6 images: 0 decision(s) changed" in out


def test_the_folded_detector_scores_as_the_loaded_one(fitted: tuple[Path, Path]) -> None:
    import torch

    from fader_kit.deploy.detector import Detector
    from fader_kit.deploy.inference import inference_detector

    det = Detector.load(fitted[0])
    fast = inference_detector(det)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in det.model.modules())  # the loaded one is untouched
    x = torch.rand(3, 3, det.image_size, det.image_size, generator=torch.Generator().manual_seed(0))
    (ref_map, ref_score), (got_map, got_score) = det.score_batch(x), fast.score_batch(x)
    assert torch.allclose(got_map, ref_map, atol=1e-5) and torch.allclose(got_score, ref_score, atol=1e-5)
