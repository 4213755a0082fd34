"""Tiny MVTec and VisA folder trees, written with PIL, for the data loader tests.

The trees are deliberately untidy in the ways real data is: a grayscale image, an RGBA image,
images of other sizes, masks with 0/255 values next to masks with defect ids (0/1/2).
Pixel values are chosen so that tests can check exact results.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 20  # MVTec fixture images are 20x20 unless said otherwise: loading at 20 keeps pixels exact


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """An RGB image of one colour, ``size`` = (width, height)."""
    w, h = size
    return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)).copy()


def make_mvtec(root: Path, category: str = "bottle") -> Path:
    """An MVTec-layout category with the cases the tests check.

    train/good: 000 RGB (10,20,30); 001 grayscale 77; 002 RGB 32x24 (other size) (200,100,50);
                003 RGBA (5,6,7,a=0).
    test/good:  000 RGB (1,2,3).
    test/broken: 000 RGB 20x20 with mask 000_mask.png: pixel (2,3)=128 -> True,
                 (4,5)=127 -> False, block rows 10..13 cols 10..13 = 255.
    test/crack:  000 grayscale 40x40 with a 40x40 mask, left half 255.
    """
    cat = root / category
    save(solid((10, 20, 30)), cat / "train/good/000.png")
    save(np.full((SIZE, SIZE), 77, np.uint8), cat / "train/good/001.png")
    save(solid((200, 100, 50), (32, 24)), cat / "train/good/002.png")
    rgba = np.concatenate([solid((5, 6, 7)), np.zeros((SIZE, SIZE, 1), np.uint8)], axis=2)
    save(rgba, cat / "train/good/003.png")
    (cat / "train/good/.DS_Store").write_bytes(b"junk")  # ignored: hidden, not an image
    (cat / "train/good/notes.txt").write_text("ignored: not an image")

    save(solid((1, 2, 3)), cat / "test/good/000.png")

    save(solid((90, 90, 90)), cat / "test/broken/000.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2, 3] = 128
    mask[4, 5] = 127
    mask[10:14, 10:14] = 255
    save(mask, cat / "ground_truth/broken/000_mask.png")

    save(np.full((40, 40), 150, np.uint8), cat / "test/crack/000.png")
    big = np.zeros((40, 40), np.uint8)
    big[:, :20] = 255
    save(big, cat / "ground_truth/crack/000_mask.png")
    return cat


VISA_CSV_HEADER = "object,split,label,image,mask\n"
VISA_W, VISA_H = 32, 24  # non-square, like VisA's photos


def _visa_mask() -> np.ndarray:
    """Defect ids, not 0/255: top-left quadrant id 1, one pixel id 2 in the bottom-right."""
    m = np.zeros((VISA_H, VISA_W), np.uint8)
    m[: VISA_H // 2, : VISA_W // 2] = 1
    m[VISA_H - 1, VISA_W - 1] = 2
    return m


def make_visa_csv(root: Path, category: str = "candle") -> Path:
    """VisA as released: split_csv/1cls.csv, JPEG images, id-valued PNG masks."""
    rows = []
    base = f"{category}/Data"
    for i, grey in enumerate((60, 70, 80)):
        rel = f"{base}/Images/Normal/{i:04d}.JPG"
        save(solid((grey, grey, grey), (VISA_W, VISA_H)), root / rel, format="JPEG", quality=95)
        rows.append(f"{category},train,normal,{rel},")
    rel = f"{base}/Images/Normal/0100.JPG"
    save(solid((65, 65, 65), (VISA_W, VISA_H)), root / rel, format="JPEG", quality=95)
    rows.append(f"{category},test,normal,{rel},")
    rel = f"{base}/Images/Anomaly/0200.JPG"
    save(solid((200, 40, 40), (VISA_W, VISA_H)), root / rel, format="JPEG", quality=95)
    mrel = f"{base}/Masks/Anomaly/0200.png"
    save(_visa_mask(), root / mrel)
    rows.append(f"{category},test,anomaly,{rel},{mrel}")
    # a second object in the same split file, to check category filtering
    other = "pcb1/Data/Images/Normal/0000.JPG"
    save(solid((10, 10, 10), (VISA_W, VISA_H)), root / other, format="JPEG", quality=95)
    rows.append(f"pcb1,train,normal,{other},")
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(VISA_CSV_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return csv_path


def convert_visa(src: Path, dst: Path, category: str = "candle") -> Path:
    """The converted layout, built from a released-layout tree the way anomalib converts it:
    files copied into train/good, test/good, test/bad; masks set to 255 where non-zero and named
    like their image."""
    lines = (src / "split_csv" / "1cls.csv").read_text().splitlines()[1:]
    for line in lines:
        obj, split, label, image, mask = line.split(",")
        if obj != category:
            continue
        kind = "good" if label == "normal" else "bad"
        target = dst / obj / split / kind / Path(image).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / image, target)
        if kind == "bad":
            values = np.asarray(Image.open(src / mask))
            save(np.where(values != 0, 255, 0).astype(np.uint8), dst / obj / "ground_truth" / "bad" / Path(mask).name)
    return dst / category
