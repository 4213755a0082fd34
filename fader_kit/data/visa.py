"""VisA (Zou et al., ECCV 2022), as released or as converted to the MVTec layout.

Two layouts are recognised, in this order:

1. **Released**: ``<root>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask``
   (``label`` is ``normal`` or ``anomaly``; paths relative to ``<root>``), images under
   ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG`` and masks under ``<cat>/Data/Masks/Anomaly/*.png``.
2. **Converted** (what anomalib's ``Visa.prepare_data`` and the spot-diff script write):
   ``<cat>/train/good``, ``<cat>/test/{good,bad}`` and ``<cat>/ground_truth/bad/<stem>.png``,
   either directly in ``<root>`` or in ``<root>/visa_pytorch``.

Masks are binarised as ``value > 0``: VisA's own masks store a small integer id per defect
region (1, 2, ...) rather than 255, so MVTec's ``> 127`` would erase them.  This is the rule the
converters apply (anomalib sets every non-zero mask pixel to 255 when converting), and it is
used for both layouts so that either gives identical masks.  Anomalous test images get the
defect type ``bad`` in both layouts (the split file names no defect type).
"""
from __future__ import annotations

import csv
from pathlib import Path

from fader_kit.data.layout import GOOD, Sample, build_split, looks_like_layout, scan_layout
from fader_kit.data.mvtec import check_root, resolve_category_dir
from fader_kit.data.split import CategorySplit, DataError

VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VISA_MASK_THRESHOLD = 0
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
VISA_CONVERTED_SUBDIR = "visa_pytorch"
VISA_MASK_SUFFIXES: tuple[str, ...] = (".png", "_mask.png")
VISA_DEFECT = "bad"
_COLUMNS = ("object", "split", "label", "image", "mask")


def _converted_root(root: Path) -> Path | None:
    """The folder holding converted category folders, if there is one."""
    for candidate in (root, root / VISA_CONVERTED_SUBDIR):
        if candidate.is_dir() and any(looks_like_layout(d) for d in candidate.iterdir() if d.is_dir()):
            return candidate
    return None


def detect_visa_layout(root: Path) -> tuple[str, Path]:
    """``("csv", csv_file)`` or ``("converted", folder)``; a DataError when neither is present."""
    check_root(root, "visa")
    split_csv = root / VISA_SPLIT_CSV
    if split_csv.is_file():
        return "csv", split_csv
    converted = _converted_root(root)
    if converted is not None:
        return "converted", converted
    raise DataError(
        f"visa dataset folder {root} holds neither the split file {split_csv} nor category folders in the "
        f"converted layout (<category>/train/good, also looked in {root / VISA_CONVERTED_SUBDIR})"
    )


def _read_rows(split_csv: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs, with surrounding blanks stripped; the header must name every column."""
    try:
        with split_csv.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"split file {split_csv} lacks column(s) {', '.join(missing)}; "
                    f"expected header {','.join(_COLUMNS)}"
                )
            rows = []
            for row in reader:
                clean = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if any(clean.values()):
                    rows.append((reader.line_num, clean))
            return rows
    except UnicodeDecodeError as exc:
        raise DataError(f"split file {split_csv} is not UTF-8 text ({exc})") from exc


def visa_categories(root: Path | None = None) -> list[str]:
    """The 12 official names; with ``root``, those present there (official order first, then others)."""
    if root is None:
        return list(VISA_CATEGORIES)
    kind, where = detect_visa_layout(root)
    if kind == "csv":
        names = {row["object"] for _, row in _read_rows(where)}
    else:
        names = {d.name for d in where.iterdir() if d.is_dir() and looks_like_layout(d)}
    return [c for c in VISA_CATEGORIES if c in names] + sorted(names - set(VISA_CATEGORIES))


def _samples_from_csv(root: Path, split_csv: Path, category: str) -> tuple[list[Path], list[Sample]]:
    rows = _read_rows(split_csv)
    present = [c for c in VISA_CATEGORIES if c in {r["object"] for _, r in rows}]
    present += sorted({r["object"] for _, r in rows} - set(VISA_CATEGORIES))
    mine = [(line, r) for line, r in rows if r["object"] == category]
    if not mine:
        there = ", ".join(present) or "none"
        raise DataError(
            f"unknown visa category {category!r}: the split file {split_csv} lists {there}; "
            f"known visa categories: {', '.join(VISA_CATEGORIES)}"
        )
    train: list[Path] = []
    normal: list[Sample] = []
    anomalous: list[Sample] = []
    for line, r in mine:
        where = f"{split_csv} line {line}"
        split, label = r["split"].lower(), r["label"].lower()
        if split not in ("train", "test"):
            raise DataError(f"{where}: split {r['split']!r} is neither 'train' nor 'test'")
        if label not in ("normal", "anomaly"):
            raise DataError(f"{where}: label {r['label']!r} is neither 'normal' nor 'anomaly'")
        if not r["image"]:
            raise DataError(f"{where}: empty image column")
        image = root / r["image"]
        if not image.is_file():
            raise DataError(f"image {image} (listed in {where}) does not exist")
        if split == "train":
            if label != "normal":
                raise DataError(f"{where}: anomalous image {image} in the train split (train must be normal only)")
            train.append(image)
        elif label == "normal":
            normal.append(Sample(image, GOOD))
        else:
            if not r["mask"]:
                raise DataError(f"defect image {image} has no mask: empty mask column in {where}")
            mask = root / r["mask"]
            if not mask.is_file():
                raise DataError(f"defect image {image} has no mask: {mask} (listed in {where}) does not exist")
            anomalous.append(Sample(image, VISA_DEFECT, mask))
    if not train:
        raise DataError(f"split file {split_csv} lists no train images for category {category!r}")
    test = sorted(normal, key=lambda s: s.image) + sorted(anomalous, key=lambda s: s.image)
    if not test:
        raise DataError(f"split file {split_csv} lists no test images for category {category!r}")
    return sorted(train), test


def load_visa(root: Path, category: str, image_size: int, *, progress: bool = False) -> CategorySplit:
    """Load one VisA category from ``root`` in whichever layout is present (see the module doc)."""
    kind, where = detect_visa_layout(root)
    if kind == "csv":
        train, test = _samples_from_csv(root, where, category)
    else:
        folder = resolve_category_dir(where, category, "visa", visa_categories(root), VISA_CATEGORIES)
        train, test = scan_layout(folder, mask_suffixes=VISA_MASK_SUFFIXES)
    return build_split(
        dataset="visa",
        category=category,
        image_size=image_size,
        train=train,
        test=test,
        mask_threshold=VISA_MASK_THRESHOLD,
        progress=progress,
    )
