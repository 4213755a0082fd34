"""``fit --out`` and ``predict --out`` mistakes are user errors, said before any training, and a fit
that fails never leaves half a detector (the folder is written beside the target, renamed at the end)."""
from __future__ import annotations

from pathlib import Path

import pytest
from deploy_cases import TINY, write_parts

import fader_kit.model.pipeline as pipeline
from fader_kit.cli.main import main
from fader_kit.deploy.detector import Detector
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit import fit_detector


@pytest.fixture()
def normal(tmp_path: Path) -> Path:
    write_parts(tmp_path / "normal", 12)
    return tmp_path / "normal"


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "ear_stage", refuse)


def fit(normal: Path, out: Path, **kw: object) -> Detector:
    kw = {"seed": 0, **kw}
    return fit_detector(normal, masker="patch_stats", profile=TINY, out=out, head_variant="pseudo_focused",
                        false_alarm_rate=0.2, log=lambda _: None, **kw)


def test_out_that_is_a_file_is_refused_before_training(normal: Path, tmp_path: Path, no_training: None,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Before: "internal error" after the whole training."""
    taken = tmp_path / "taken"
    taken.write_text("x")
    rc = main(["fit", "--normal", str(normal), "--out", str(taken), "--profile", "smoke", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"--out {taken}: {taken} is a file, not a folder" in err
    rc = main(["predict", str(tmp_path / "no_such_detector"), str(normal), "--out", str(taken), "--quiet"])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err  # said before the detector is read


def test_an_existing_detector_is_replaced_only_with_overwrite(normal: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: fit --out onto a detector folder overwrote it silently, file by file."""
    out = tmp_path / "det"
    first = fit(normal, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="a detector folder is already there; pass --overwrite"):
        fit(normal, out, seed=1)
    # a fit that fails while writing leaves the old detector exactly as it was, and nothing beside it
    real_save = Detector.save

    def fail_half_way(self: Detector, folder: Path, **kw: object) -> Path:
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Detector, "save", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        fit(normal, out, seed=1, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "normal"]
    monkeypatch.setattr(Detector, "save", real_save)
    second = fit(normal, out, seed=1, overwrite=True)
    assert second.manifest.settings.seed == 1 and Detector.load(out).manifest.settings.seed == 1
    assert first.manifest.settings.seed == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["det", "normal"]


def test_a_failed_fit_leaves_no_folder_and_other_folders_are_never_replaced(normal: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Detector, folder: Path, **kw: object) -> Path:
        (Path(folder) / "detector.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(Detector, "save", fail)
    with pytest.raises(OSError):
        fit(normal, tmp_path / "new")
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["normal"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    monkeypatch.setattr(pipeline, "ear_stage", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match="not empty and is not a detector folder"):
        fit(normal, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
