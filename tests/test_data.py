"""Data loaders: MVTec and VisA fixture trees, untidy inputs, bad inputs, the synthetic generator."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fader_kit.data.synthetic as synthetic_module
from fader_kit.data import (
    DEFECT_KINDS,
    MVTEC_CATEGORIES,
    MVTEC_TEXTURES,
    SYNTHETIC_CATEGORIES,
    VISA_CATEGORIES,
    CategorySplit,
    DataError,
    DataSpec,
    SyntheticConfig,
    detect_visa_layout,
    generate_synthetic,
    list_categories,
    load_category,
    parse_data_spec,
)

try:  # tests/ may or may not become a package
    from . import data_fixtures as fx
except ImportError:
    import data_fixtures as fx

TINY = SyntheticConfig(n_train=3, n_test_good=2, n_per_defect=1)


# ------------------------------------------------------------------------------------ specs


def test_parse_data_spec_accepts_the_three_forms(tmp_path: Path) -> None:
    assert parse_data_spec("synthetic") == DataSpec(kind="synthetic")
    assert parse_data_spec(f"mvtec:{tmp_path}") == DataSpec(kind="mvtec", path=tmp_path)
    assert parse_data_spec(f"VisA:{tmp_path}").kind == "visa"
    assert parse_data_spec("mvtec:C:/data").path == Path("C:/data")  # only the first ':' splits


@pytest.mark.parametrize("text", ["imagenet:/x", "mvtec", "visa:", "synthetic:/x", ""])
def test_parse_data_spec_rejects_naming_the_argument(text: str) -> None:
    with pytest.raises(ValueError, match="argument data="):
        parse_data_spec(text)


def test_bad_image_size_and_category_arguments() -> None:
    with pytest.raises(DataError, match="image_size"):
        load_category("synthetic", "washer", 0)
    with pytest.raises(DataError, match="category"):
        load_category("synthetic", "", 64)


def test_list_categories() -> None:
    assert list_categories("mvtec") == list(MVTEC_CATEGORIES)
    assert len(MVTEC_CATEGORIES) == 15 and set(MVTEC_TEXTURES) == {"carpet", "grid", "leather", "tile", "wood"}
    assert list_categories("visa") == list(VISA_CATEGORIES) and len(VISA_CATEGORIES) == 12
    assert list_categories("synthetic") == list(SYNTHETIC_CATEGORIES)
    assert len(SYNTHETIC_CATEGORIES) >= 4


# ------------------------------------------------------------------------------------ MVTec


@pytest.fixture()
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    fx.make_mvtec(root, "bottle")
    return root


def test_mvtec_loads_untidy_images_exactly(mvtec_root: Path) -> None:
    split = load_category(f"mvtec:{mvtec_root}", "bottle", fx.SIZE)
    s = fx.SIZE
    assert isinstance(split, CategorySplit)
    assert (split.dataset, split.category, split.image_size) == ("mvtec", "bottle", s)
    assert split.train.shape == (4, 3, s, s) and split.train.dtype == torch.float32
    assert split.test.shape == (3, 3, s, s) and split.masks.shape == (3, 1, s, s)
    assert split.masks.dtype == torch.bool and split.labels.dtype == torch.long
    assert [Path(p).name for p in split.train_paths] == ["000.png", "001.png", "002.png", "003.png"]
    # RGB kept exactly
    assert torch.equal(split.train[0, :, 5, 5], torch.tensor([10, 20, 30]) / 255.0)
    # grayscale -> three equal channels
    assert torch.equal(split.train[1], torch.full((3, s, s), 77 / 255.0))
    # other size -> resized; a constant image stays constant
    assert torch.allclose(split.train[2], (torch.tensor([200.0, 100, 50]) / 255).view(3, 1, 1).expand(3, s, s))
    # RGBA -> RGB, alpha dropped
    assert torch.equal(split.train[3, :, 0, 0], torch.tensor([5, 6, 7]) / 255.0)
    assert 0.0 <= float(split.train.min()) and float(split.train.max()) <= 1.0


def test_mvtec_test_order_labels_and_masks(mvtec_root: Path) -> None:
    split = load_category(f"mvtec:{mvtec_root}", "bottle", fx.SIZE)
    assert split.defect_types == ["good", "broken", "crack"]  # good first, then alphabetical
    assert split.labels.tolist() == [0, 1, 1]
    assert not split.masks[0].any()  # normal: all False
    broken = split.masks[1, 0]
    assert bool(broken[2, 3])  # 128 > 127
    assert not bool(broken[4, 5])  # 127 stays False
    assert int(broken.sum()) == 1 + 16
    # the 40x40 grayscale defect image and its mask, shrunk to 20: left half
    crack = split.masks[2, 0]
    assert crack[:, :10].all() and not crack[:, 10:].any()
    assert torch.equal(split.test[2], torch.full((3, fx.SIZE, fx.SIZE), 150 / 255.0))


def test_mvtec_resizes_to_other_sizes(mvtec_root: Path) -> None:
    split = load_category(f"mvtec:{mvtec_root}", "bottle", 10)
    assert split.train.shape == (4, 3, 10, 10) and split.masks.shape == (3, 1, 10, 10)
    assert split.masks[2, 0, :, :5].all() and not split.masks[2, 0, :, 5:].any()


def test_mvtec_downscaling_is_antialiased(mvtec_root: Path) -> None:
    # a one-pixel checkerboard shrunk 2x must average to grey, not alias to black or white
    board = (np.indices((40, 40)).sum(0) % 2 * 255).astype(np.uint8)
    fx.save(board, mvtec_root / "bottle/train/good/004.png")
    split = load_category(f"mvtec:{mvtec_root}", "bottle", fx.SIZE)
    grey = split.train[4, :, 2:-2, 2:-2]
    assert float(grey.min()) > 0.4 and float(grey.max()) < 0.6


def test_sixteen_bit_image_and_colour_masks(tmp_path: Path) -> None:
    from fader_kit.data.imageio import mask_values, read_image

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 77 * 257, np.uint16)).save(path)  # 16-bit grayscale
    assert Image.open(path).mode.startswith("I")
    array, original = read_image(path, 6)
    assert original == (6, 6) and array.shape == (6, 6, 3) and (array == 77).all()
    # palette mask: read as the colours it shows; a red annotation counts like a white one
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert mask_values(palette).tolist() == [[0, 255], [255, 0]]
    red = Image.fromarray(np.array([[[0, 0, 0], [200, 0, 0]]], np.uint8))
    assert mask_values(red).tolist() == [[0, 200]]


def test_mvtec_list_categories_present(mvtec_root: Path) -> None:
    fx.make_mvtec(mvtec_root, "screw")
    (mvtec_root / "license.txt").write_text("x")
    assert list_categories(f"mvtec:{mvtec_root}") == ["bottle", "screw"]  # official order


def test_mvtec_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no_such_mvtec"):
        load_category(f"mvtec:{tmp_path / 'no_such_mvtec'}", "bottle", 16)


def test_mvtec_unknown_category_lists_present(mvtec_root: Path) -> None:
    with pytest.raises(DataError, match="'bottel'.*bottle"):
        load_category(f"mvtec:{mvtec_root}", "bottel", 16)
    with pytest.raises(DataError, match="'cable' is not in"):
        load_category(f"mvtec:{mvtec_root}", "cable", 16)


def test_mvtec_corrupt_image_named(mvtec_root: Path) -> None:
    (mvtec_root / "bottle/test/good/zz_broken_file.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="zz_broken_file.png"):
        load_category(f"mvtec:{mvtec_root}", "bottle", 16)


def test_mvtec_truncated_image_named(mvtec_root: Path) -> None:
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = fx.save(big, mvtec_root / "bottle/train/good/zz_truncated.png")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="zz_truncated.png"):
        load_category(f"mvtec:{mvtec_root}", "bottle", 16)


def test_mvtec_defect_without_mask_named(mvtec_root: Path) -> None:
    (mvtec_root / "bottle/ground_truth/broken/000_mask.png").unlink()
    with pytest.raises(DataError, match=r"broken[/\\]000\.png has no mask.*000_mask\.png"):
        load_category(f"mvtec:{mvtec_root}", "bottle", 16)


def test_mvtec_mask_size_mismatch_named(mvtec_root: Path) -> None:
    fx.save(np.zeros((10, 10), np.uint8), mvtec_root / "bottle/ground_truth/broken/000_mask.png")
    with pytest.raises(DataError, match=r"000_mask\.png is 10x10 px but its image .*000\.png is 20x20"):
        load_category(f"mvtec:{mvtec_root}", "bottle", 16)


def test_mvtec_empty_train_folder_named(mvtec_root: Path) -> None:
    for p in (mvtec_root / "bottle/train/good").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=r"train[/\\]good holds no images"):
        load_category(f"mvtec:{mvtec_root}", "bottle", 16)


def test_mvtec_missing_train_folder_named(tmp_path: Path) -> None:
    (tmp_path / "grid" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match=r"grid[/\\]train[/\\]good"):
        load_category(f"mvtec:{tmp_path}", "grid", 16)


def test_load_with_progress_bar(mvtec_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = load_category(f"mvtec:{mvtec_root}", "bottle", 8, progress=True)
    assert split.train.shape[0] == 4
    assert "mvtec/bottle test" in capsys.readouterr().err  # the tqdm bar, on stderr


# ------------------------------------------------------------------------------------ VisA


@pytest.fixture()
def visa_root(tmp_path: Path) -> Path:
    root = tmp_path / "VisA"
    fx.make_visa_csv(root)
    return root


def _check_visa(split: CategorySplit, size: int) -> None:
    assert split.dataset == "visa" and split.category == "candle"
    assert split.train.shape == (3, 3, size, size) and split.test.shape == (2, 3, size, size)
    assert split.labels.tolist() == [0, 1] and split.defect_types == ["good", "bad"]
    assert not split.masks[0].any()
    m = split.masks[1, 0]
    h = size // 2
    # id-valued mask (0/1/2): the id-1 quadrant is True (> 0), the rest False except the id-2 pixel
    assert m[:h, :h].all()
    assert int(m.sum()) == h * h + 1 and bool(m[-1, -1])
    # JPEG greys stay grey (equal channels within JPEG error) and near their value
    assert abs(float(split.train[0].mean()) - 60 / 255) < 3 / 255
    red = split.test[1, :, size // 2, size // 2] * 255
    assert abs(float(red[0]) - 200) < 6 and abs(float(red[1]) - 40) < 6


def test_visa_csv_layout(visa_root: Path) -> None:
    assert detect_visa_layout(visa_root)[0] == "csv"
    split = load_category(f"visa:{visa_root}", "candle", 16)
    _check_visa(split, 16)
    assert list_categories(f"visa:{visa_root}") == ["candle", "pcb1"]


@pytest.mark.parametrize("subdir", ["", "visa_pytorch"])
def test_visa_converted_layout_matches_csv(visa_root: Path, tmp_path: Path, subdir: str) -> None:
    converted_root = tmp_path / "converted"
    fx.convert_visa(visa_root, converted_root / subdir if subdir else converted_root)
    kind, _ = detect_visa_layout(converted_root)
    assert kind == "converted"
    split = load_category(f"visa:{converted_root}", "candle", 16)
    _check_visa(split, 16)
    reference = load_category(f"visa:{visa_root}", "candle", 16)
    assert torch.equal(split.train, reference.train) and torch.equal(split.test, reference.test)
    assert torch.equal(split.masks, reference.masks)
    assert list_categories(f"visa:{converted_root}") == ["candle"]


def test_visa_unknown_category(visa_root: Path) -> None:
    with pytest.raises(DataError, match=r"'cashews'.*candle, pcb1"):
        load_category(f"visa:{visa_root}", "cashews", 16)


def test_visa_missing_mask_named(visa_root: Path) -> None:
    (visa_root / "candle/Data/Masks/Anomaly/0200.png").unlink()
    with pytest.raises(DataError, match=r"0200\.JPG has no mask.*0200\.png"):
        load_category(f"visa:{visa_root}", "candle", 16)


def test_visa_missing_image_named(visa_root: Path) -> None:
    (visa_root / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DataError, match=r"0001\.JPG.*1cls\.csv line"):
        load_category(f"visa:{visa_root}", "candle", 16)


def test_visa_mask_size_mismatch_named(visa_root: Path) -> None:
    fx.save(np.ones((5, 5), np.uint8), visa_root / "candle/Data/Masks/Anomaly/0200.png")
    with pytest.raises(DataError, match=r"0200\.png is 5x5 px"):
        load_category(f"visa:{visa_root}", "candle", 16)


def test_visa_corrupt_jpeg_named(visa_root: Path) -> None:
    (visa_root / "candle/Data/Images/Normal/0002.JPG").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"0002\.JPG"):
        load_category(f"visa:{visa_root}", "candle", 16)


def test_visa_bad_csv_header_named(visa_root: Path) -> None:
    (visa_root / "split_csv/1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError, match=r"1cls\.csv lacks column\(s\) label, mask"):
        load_category(f"visa:{visa_root}", "candle", 16)


def test_visa_neither_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split_csv"):
        load_category(f"visa:{tmp_path}", "candle", 16)


# ------------------------------------------------------------------------------------ synthetic


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_synthetic_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = load_category("synthetic", "weave", 64, seed=3, cache_dir=tmp_path / "a", synthetic=TINY)
    b = load_category("synthetic", "weave", 64, seed=3, cache_dir=tmp_path / "b", synthetic=TINY)
    c = load_category("synthetic", "weave", 64, seed=4, cache_dir=tmp_path / "a", synthetic=TINY)
    for name in ("train", "test", "labels", "masks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.train, c.train) and not torch.equal(a.masks, c.masks)
    # the files themselves are byte-identical
    (fa,) = (tmp_path / "a" / "synthetic").glob("*seed3*")
    (fb,) = (tmp_path / "b" / "synthetic").glob("*seed3*")
    assert _digest(fa) == _digest(fb)


def test_synthetic_images_do_not_depend_on_counts(tmp_path: Path) -> None:
    small = load_category("synthetic", "plate", 64, cache_dir=tmp_path, synthetic=TINY)
    bigger = SyntheticConfig(n_train=5, n_test_good=2, n_per_defect=1)
    more = load_category("synthetic", "plate", 64, cache_dir=tmp_path, synthetic=bigger)
    assert torch.equal(more.train[:3], small.train)
    assert torch.equal(more.test, small.test)


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_synthetic_masks_nonempty_exactly_for_defects(tmp_path: Path, category: str) -> None:
    split = load_category("synthetic", category, 64, cache_dir=tmp_path, synthetic=TINY)
    assert split.dataset == "synthetic" and split.train.shape == (3, 3, 64, 64)
    assert split.test.shape == (2 + len(DEFECT_KINDS), 3, 64, 64)
    assert split.defect_types == ["good", "good", *sorted(DEFECT_KINDS)]
    has_mask = split.masks.flatten(1).any(dim=1)
    assert torch.equal(has_mask, split.labels.bool())
    # a defect changes its masked pixels: they differ from the normal mean more than the rest do
    normal_mean = split.train.mean(0)
    for i in torch.nonzero(split.labels).flatten().tolist():
        diff = (split.test[i] - normal_mean).abs().mean(0)
        m = split.masks[i, 0]
        assert float(diff[m].mean()) > float(diff[~m].mean()), split.defect_types[i]
    # normal images vary (pose, lighting, noise): not copies of one another
    assert float((split.train[0] - split.train[1]).abs().mean()) > 0.01


def test_synthetic_default_counts_and_size(tmp_path: Path) -> None:
    split = load_category("synthetic", "washer", 32, cache_dir=tmp_path)
    # >= 100 normal and >= 100 defective test images: one AUROC's standard error <= ~0.03
    assert split.train.shape == (60, 3, 32, 32) and split.labels.tolist().count(0) == 100
    assert split.labels.tolist().count(1) == 20 * len(DEFECT_KINDS) == 100
    (folder,) = (tmp_path / "synthetic").iterdir()
    with Image.open(next((folder / "washer" / "train" / "good").iterdir())) as img:
        assert img.size == (128, 128)  # generated at 128, resized by the loader


def test_synthetic_unknown_category_and_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'bottle'.*weave"):
        load_category("synthetic", "bottle", 32, cache_dir=tmp_path)
    with pytest.raises(DataError, match="seed"):
        load_category("synthetic", "weave", 32, seed=-1, cache_dir=tmp_path)


def test_synthetic_cache_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FADER_KIT_CACHE", str(tmp_path / "env_cache"))
    load_category("synthetic", "cells", 32, synthetic=TINY)
    assert list((tmp_path / "env_cache" / "synthetic").glob("*/cells/train/good/000.png"))


def test_synthetic_interrupted_generation_leaves_nothing_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_save = synthetic_module._save_png

    def failing_save(array: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        real_save(array, path)

    monkeypatch.setattr(synthetic_module, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        load_category("synthetic", "washer", 32, cache_dir=tmp_path, synthetic=TINY)
    (keyed,) = (tmp_path / "synthetic").iterdir()
    assert list(keyed.iterdir()) == []  # neither a category folder nor a leftover temp folder
    monkeypatch.setattr(synthetic_module, "_save_png", real_save)
    split = load_category("synthetic", "washer", 32, cache_dir=tmp_path, synthetic=TINY)
    assert split.train.shape[0] == 3


def test_generate_synthetic_files_load_as_mvtec(tmp_path: Path) -> None:
    folders = generate_synthetic(tmp_path / "gen", categories=["plate"], seed=2, config=TINY)
    assert folders == [tmp_path / "gen" / "plate"]
    assert sorted(p.name for p in (tmp_path / "gen" / "plate" / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
    as_mvtec = load_category(f"mvtec:{tmp_path / 'gen'}", "plate", 48)
    direct = load_category("synthetic", "plate", 48, seed=2, cache_dir=tmp_path / "cache", synthetic=TINY)
    assert torch.equal(as_mvtec.test, direct.test) and torch.equal(as_mvtec.masks, direct.masks)
    assert list_categories(f"mvtec:{tmp_path / 'gen'}") == ["plate"]
    with pytest.raises(DataError, match="already exists"):
        generate_synthetic(tmp_path / "gen", categories=["plate"], config=TINY)
    generate_synthetic(tmp_path / "gen", categories=["plate"], seed=5, config=TINY, overwrite=True)
    assert "seed" in (tmp_path / "gen" / "plate" / "synthetic.json").read_text()


def test_synthetic_generation_touches_no_global_rng(tmp_path: Path) -> None:
    np.random.seed(123)
    torch.manual_seed(123)
    before_np, before_torch = np.random.random(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    load_category("synthetic", "cells", 32, cache_dir=tmp_path, synthetic=TINY)
    assert np.random.random() == before_np and torch.equal(torch.rand(1), before_torch)
