"""Every score is a detector: ``masker``, ``ear``, ``fader`` and ``fused`` fit, save, load, predict and
export alike, from parts trained once; the folder of each is as sealed as today's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fader_kit.model.pipeline as pipeline
from fader_kit.deploy.detector import Detector
from fader_kit.errors import ConfigError, ModelDirError
from fader_kit.deploy.fit_parts import candidate_detectors, train_parts
from fader_kit.deploy.fit import fit_detector, fit_manifest, holdout_split, read_images
from fader_kit.model.fusion import fuse_maps
from fader_kit.deploy.imagefiles import normal_images
from fader_kit.maskers.registry import default_registry
from fader_kit.deploy.score_kinds import KINDS, SCORE_NAMES, score_kind
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT
from fader_kit.model.variants import resolve as resolve_variant
from deploy_cases import TINY, part, write_parts


@pytest.fixture(scope="module")
def parts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    write_parts(root / "normal", 12, seed=3)
    Image.fromarray(part(np.random.default_rng(0), defect=True)).save(root / "defect.png")
    return root


@pytest.fixture(scope="module")
def folders(parts_root: Path) -> dict[str, Path]:
    """One detector folder per kind, every kind calibrated from one training (candidate_detectors)."""
    from fader_kit.deploy.detector import DetectorSettings, TrainingSummary

    paths = normal_images(parts_root / "normal")
    train_idx, hold_idx = holdout_split(len(paths), 0.15, 0)
    images = read_images(paths, TINY.image_size)
    masker = default_registry().create("patch_stats")
    masker.fit(images[train_idx], seed=0)
    head = resolve_variant(TINY.fader_head, DEFAULT_HEAD_VARIANT)
    parts = train_parts(SCORE_NAMES, images[train_idx], masker, "patch_stats", profile=TINY, head=head,
                        ear_masks="blobs", seed=0, device=torch.device("cpu"), log=lambda _: None)
    settings = DetectorSettings(profile="tiny", image_size=TINY.image_size, masker="patch_stats",
                                fader_variant=DEFAULT_HEAD_VARIANT, fader_config=head.model_dump(mode="json"),
                                unet_config=TINY.unet.model_dump(mode="json"), seed=0, holdout=0.15,
                                false_alarm_rate=0.2)
    summary = TrainingSummary(normal_folder=str(parts_root / "normal"), n_images=len(paths), n_train=len(train_idx),
                              n_holdout=len(hold_idx), holdout_files=[paths[i].name for i in hold_idx], device="cpu",
                              seconds={}, masker_info=masker.info.model_dump(mode="json"), created_at="")
    detectors = candidate_detectors(parts, SCORE_NAMES, images[hold_idx], fit_manifest(settings, summary), rate=0.2)
    assert list(detectors) == list(SCORE_NAMES)
    return {name: d.save(parts_root / name) for name, d in detectors.items()}


def test_the_kinds_are_enumerable_and_an_unknown_one_is_named() -> None:
    assert SCORE_NAMES == ("masker", "ear", "fader", "fused") and set(KINDS) == set(SCORE_NAMES)
    assert [k.unet for k in KINDS.values()] == [False, True, True, True]
    assert [k.head for k in KINDS.values()] == [False, False, True, False]
    with pytest.raises(ConfigError, match="--score 'best'.*masker, ear, fader, fused"):
        score_kind("best")


def test_each_kind_saves_loads_and_predicts_the_same(folders: dict[str, Path], parts_root: Path) -> None:
    image = parts_root / "defect.png"
    for name, folder in folders.items():
        d = Detector.load(folder)
        assert d.kind.name == name and d.settings.score == name
        assert (d.model is None) == (name == "masker")
        assert d.model is None or (d.model.head is not None) == (name == "fader")
        assert ((folder / "model.safetensors").exists()) == (name != "masker")
        assert (d.calibration.fusion is not None) == (name == "fused")
        p = d.predict([image, image])
        assert len(p) == 2 and p[0].anomaly_map.shape == (TINY.image_size, TINY.image_size)
        assert p[0].score == pytest.approx(float(p[0].anomaly_map.max()))
        assert f"score `{name}`" in (folder / "README.md").read_text()


def test_the_masker_kind_is_the_masker_map_and_the_fused_kind_fuses_the_two(folders: dict[str, Path],
                                                                            parts_root: Path) -> None:
    masker_d, ear_d, fused_d = (Detector.load(folders[k]) for k in ("masker", "ear", "fused"))
    x = masker_d.as_tensor([parts_root / "defect.png", *normal_images(parts_root / "normal")[:2]])
    m_maps, m_scores = masker_d.score_batch(x)
    assert torch.equal(m_maps, masker_d.masker.score_map(x).float())
    assert torch.equal(m_scores, m_maps.flatten(1).amax(1))
    ear_maps, _ = ear_d.score_batch(x)
    fused_maps, fused_scores = fused_d.score_batch(x)
    fusion = fused_d.calibration.fusion
    assert fusion is not None and fusion.rule == "weighted"
    torch.testing.assert_close(fused_maps, fuse_maps(ear_maps, m_maps, fusion))
    assert torch.equal(fused_scores, fused_maps.flatten(1).amax(1))


def test_fit_of_the_masker_kind_trains_and_ships_no_unet(parts_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for stage in ("ear_stage", "fader_stage", "train_ear"):
        monkeypatch.setattr(pipeline, stage, lambda *a, **k: pytest.fail("a U-Net was trained"))
    d = fit_detector(parts_root / "normal", masker="patch_stats", profile=TINY, out=tmp_path / "m", score="masker",
                     head_variant=DEFAULT_HEAD_VARIANT, false_alarm_rate=0.2, log=lambda _: None)
    assert d.model is None and "ear" not in d.manifest.training.seconds
    manifest = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert manifest["settings"]["score"] == "masker" and manifest["format_version"] == 3
    assert sorted(manifest["sha256"]) == sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "model.safetensors" not in manifest["sha256"]
    again = Detector.load(tmp_path / "m")
    image = parts_root / "defect.png"
    assert again.predict(image)[0].score == d.predict(image)[0].score


def _reseal(folder: Path) -> None:
    from test_model_dir import reseal

    reseal(folder)


def test_every_kinds_folder_refuses_tampering(folders: dict[str, Path], tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        return Path(shutil.copytree(folders[name], tmp_path / f"{name}{len(list(tmp_path.iterdir()))}"))

    for name in SCORE_NAMES:  # the score changed in place: the manifest's own digest
        folder = copy(name)
        raw = json.loads((folder / "detector.json").read_text())
        raw["settings"]["score"] = "fader" if name != "fader" else "ear"
        (folder / "detector.json").write_text(json.dumps(raw))
        with pytest.raises(ModelDirError, match="changed after fitting|lists no digest for .*model.safetensors"):
            Detector.load(folder)
    folder = copy("masker")  # a model file slipped into a masker-only folder
    shutil.copy(folders["ear"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelDirError, match="model.safetensors, which is not a file of this detector"):
        Detector.load(folder, verify=False)
    _reseal(folder)
    with pytest.raises(ModelDirError, match="lists a digest for model.safetensors"):
        Detector.load(folder)
    folder = copy("fused")  # the model file of a fused detector removed
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="missing file"):
        Detector.load(folder)
    folder = copy("fused")  # its fusion scales removed, digests recomputed
    cal = json.loads((folder / "calibration.json").read_text())
    cal["fusion"] = None
    (folder / "calibration.json").write_text(json.dumps(cal))
    _reseal(folder)
    with pytest.raises(ModelDirError, match="calibration.json: field fusion"):
        Detector.load(folder)
    folder = copy("ear")  # an ear folder relabelled fader, digests recomputed: no head tensors
    raw = json.loads((folder / "detector.json").read_text())
    raw["settings"]["score"] = "fader"
    (folder / "detector.json").write_text(json.dumps(raw))
    _reseal(folder)
    with pytest.raises(ModelDirError, match="model.safetensors lacks tensor"):
        Detector.load(folder)
    for score, version in (("nonsense", 3), ("masker", 2)):
        folder = copy("masker")
        raw = json.loads((folder / "detector.json").read_text())
        raw["settings"]["score"], raw["format_version"] = score, version
        (folder / "detector.json").write_text(json.dumps(raw))
        _reseal(folder)
        with pytest.raises(ModelDirError, match="settings.score"):
            Detector.load(folder)


def test_a_version_two_folder_loads_as_a_fader_detector(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(folders["fader"], tmp_path / "v2"))
    raw = json.loads((folder / "detector.json").read_text())
    raw["format_version"] = 2
    del raw["settings"]["score"]
    (folder / "detector.json").write_text(json.dumps(raw))
    _reseal(folder)
    assert Detector.load(folder).kind.name == "fader"


def test_onnx_graph_of_each_kind_matches_the_detector(folders: dict[str, Path], parts_root: Path,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fader_kit.deploy.export import OnnxScorer, export_detector

    x = None
    for name, folder in folders.items():
        report = export_detector(folder, tmp_path / f"{name}.onnx", check_images=[parts_root / "normal"])
        assert report.max_abs_diff_score is not None and report.max_abs_diff_score <= 1e-4
        d = Detector.load(folder)
        x = d.as_tensor([parts_root / "defect.png"]) if x is None else x
        scorer = OnnxScorer(tmp_path / f"{name}.onnx")
        assert scorer.calibration == d.calibration
        onnx_maps, onnx_scores = scorer.score_batch(x)
        torch.testing.assert_close(onnx_maps, d.score_batch(x)[0], atol=1e-4, rtol=1e-4)
        assert scorer.detector_meta["settings"]["score"] == name


def test_cli_fit_and_predict_with_a_score_kind(parts_root: Path, folders: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from fader_kit.cli.main import main

    monkeypatch.setattr("fader_kit.model.config.get_profile", lambda name: TINY)
    monkeypatch.setattr(pipeline, "ear_stage", lambda *a, **k: pytest.fail("a U-Net was trained"))
    out = tmp_path / "m"
    assert main(["fit", "--normal", str(parts_root / "normal"), "--out", str(out), "--quiet", "--score", "masker",
                 "--masker", "patch_stats", "--false-alarm-rate", "0.2"]) == 0
    assert "score `masker`" in (out / "README.md").read_text()
    for folder in (out, folders["fused"]):
        assert main(["predict", str(folder), str(parts_root / "defect.png"), "--out", str(tmp_path / folder.name),
                     "--quiet"]) == 0
        assert (tmp_path / folder.name / "predictions.csv").read_text().count("\n") == 2
    with pytest.raises(SystemExit):
        main(["fit", "--normal", str(parts_root / "normal"), "--out", str(tmp_path / "x"), "--score", "best"])
    capsys.readouterr()
