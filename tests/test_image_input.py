"""What an image becomes before the model sees it: tensors of the wrong dtype or range refused by
argument, 16-bit / 32-bit / float images scaled by their type's range (or refused by name), EXIF
orientation applied in fit and predict alike, oversized images refused from their header."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fader_kit.data import DataError
from fader_kit.data.imageio import MAX_PIXELS, read_image
from fader_kit.deploy.detector import Detector
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit import fit_detector
from fader_kit.deploy.imagefiles import pil_array
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT
from deploy_cases import TINY, write_parts


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    root = tmp_path_factory.mktemp("inputs")
    write_parts(root / "normal", 10, seed=3)
    return fit_detector(root / "normal", masker="patch_stats", profile=TINY, head_variant=DEFAULT_HEAD_VARIANT,
                        seed=0, false_alarm_rate=0.2, log=lambda _: None)


def test_predict_refuses_tensors_of_the_wrong_dtype_or_range(detector: Detector) -> None:
    good = torch.rand(2, 3, 32, 32)
    assert len(detector.predict(good)) == 2
    with pytest.raises(ConfigError, match=r"images.*uint8.*\[0, 1\]"):
        detector.predict((good * 255).to(torch.uint8))
    with pytest.raises(ConfigError, match=r"images.*int64"):
        detector.predict(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"images.*\[0, 1\].*255"):
        detector.predict(good * 255)  # 0-255 floats: the most common slip
    with pytest.raises(ConfigError, match=r"images.*not finite"):
        detector.predict(torch.full((1, 3, 32, 32), float("nan")))


def _gray(tmp_path: Path, name: str, values: np.ndarray, mode: str) -> Path:
    path = tmp_path / name
    img = Image.fromarray(values)  # uint16 -> I;16, int32 -> I, float32 -> F
    assert img.mode == mode
    img.save(path)
    return path


def test_sixteen_and_thirty_two_bit_and_float_images_are_scaled_by_their_range(tmp_path: Path) -> None:
    ramp16 = np.linspace(0, 65535, 16 * 16).reshape(16, 16)
    expected = np.rint(ramp16 / 257.0)
    i16 = _gray(tmp_path, "i16.png", ramp16.astype(np.uint16), "I;16")
    i32 = _gray(tmp_path, "i32.tif", ramp16.astype(np.int32), "I")
    for path in (i16, i32):
        arr, _ = read_image(path, 16)
        assert np.abs(arr[:, :, 0].astype(float) - expected).max() <= 1, path.name  # not clipped at 255
    unit = np.linspace(0, 1, 16 * 16).reshape(16, 16).astype(np.float32)
    arr, _ = read_image(_gray(tmp_path, "f01.tif", unit, "F"), 16)
    assert np.abs(arr[:, :, 0].astype(float) - np.rint(unit * 255)).max() <= 1  # [0, 1] floats: not black
    arr, _ = read_image(_gray(tmp_path, "f255.tif", unit * 255, "F"), 16)
    assert np.abs(arr[:, :, 0].astype(float) - np.rint(unit * 255)).max() <= 1  # [0, 255] floats as they are
    with pytest.raises(DataError, match=r"fneg\.tif.*range"):
        read_image(_gray(tmp_path, "fneg.tif", unit * 1000 - 10, "F"), 16)
    with pytest.raises(DataError, match=r"ineg\.tif.*range"):
        read_image(_gray(tmp_path, "ineg.tif", (ramp16 - 100).astype(np.int32), "I"), 16)


def _oriented(tmp_path: Path, orientation: int) -> Path:
    """A 40 x 20 (w x h) image, left half black, right half white, with an EXIF orientation tag."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    img.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_in_fit_and_predict_alike(tmp_path: Path, detector: Detector) -> None:
    path = _oriented(tmp_path, 6)  # 6: shown rotated 90 degrees clockwise, so the black half is on top
    arr, size = read_image(path, 32)
    assert size == (20, 40)  # as shown
    assert arr[:8].mean() < 40 and arr[-8:].mean() > 215
    with Image.open(path) as img:
        assert np.abs(pil_array(img, 32).astype(int) - arr.astype(int)).max() <= 1  # a PIL image: the same
    from_file = detector.predict([path])[0].score
    with Image.open(path) as img:
        assert detector.predict([img])[0].score == pytest.approx(from_file, abs=1e-6)


def test_an_image_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # lower than PIL's own limit, which is left alone
    before = Image.MAX_IMAGE_PIXELS
    big = tmp_path / "big.png"
    Image.new("1", (8000, 6000)).save(big)  # 48 megapixels, a few kilobytes on disk
    with pytest.raises(DataError, match=r"big\.png.*48000000 pixels"):
        read_image(big, 32)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(DataError, match=r"small\.png.*400 pixels.*100"):
        read_image(small, 32, max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == before
