"""MVTec AD (Bergmann et al., CVPR 2019) from its folder layout.

``<root>/<category>/train/good/*.png``, ``<root>/<category>/test/<defect>/*.png`` (``good`` =
normal) and ``<root>/<category>/ground_truth/<defect>/<stem>_mask.png`` with values 0/255,
binarised as ``> 127``.  Any other folder in the same layout (for instance files written by
:func:`fader_kit.data.generate_synthetic`) loads the same way under its own name.
"""
from __future__ import annotations

from pathlib import Path

from fader_kit.data.layout import build_split, looks_like_layout, scan_layout
from fader_kit.data.split import CategorySplit, DataError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS: tuple[str, ...] = tuple(c for c in MVTEC_CATEGORIES if c not in MVTEC_TEXTURES)
MVTEC_MASK_THRESHOLD = 127
MVTEC_MASK_SUFFIXES: tuple[str, ...] = ("_mask.png",)


def check_root(root: Path, dataset: str) -> Path:
    """The data set folder must exist; say which argument pointed at it when it does not."""
    if not root.exists():
        raise DataError(f"{dataset} dataset folder {root} does not exist (from data='{dataset}:{root}')")
    if not root.is_dir():
        raise DataError(f"{dataset} dataset path {root} is not a folder (from data='{dataset}:{root}')")
    return root


def mvtec_categories(root: Path | None = None) -> list[str]:
    """The 15 official names; with ``root``, those present there (official order), then any other
    folder in the MVTec layout (sorted)."""
    if root is None:
        return list(MVTEC_CATEGORIES)
    check_root(root, "mvtec")
    present = [c for c in MVTEC_CATEGORIES if looks_like_layout(root / c)]
    extra = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name not in MVTEC_CATEGORIES and not d.name.startswith(".") and looks_like_layout(d)
    )
    return present + extra


def resolve_category_dir(root: Path, category: str, dataset: str, present: list[str], known: tuple[str, ...]) -> Path:
    """``root/category`` when it exists; otherwise one error listing what is there."""
    folder = root / category
    if folder.is_dir():
        return folder
    there = ", ".join(present) if present else "none"
    if category in known:
        raise DataError(f"category {category!r} is not in {root} (no folder {folder}); present: {there}")
    raise DataError(
        f"unknown {dataset} category {category!r}: present in {root}: {there}; "
        f"known {dataset} categories: {', '.join(known)}"
    )


def load_mvtec(root: Path, category: str, image_size: int, *, progress: bool = False) -> CategorySplit:
    """Load one MVTec AD category (or any category folder in the MVTec layout) from ``root``."""
    check_root(root, "mvtec")
    folder = resolve_category_dir(root, category, "mvtec", mvtec_categories(root), MVTEC_CATEGORIES)
    train, test = scan_layout(folder, mask_suffixes=MVTEC_MASK_SUFFIXES)
    return build_split(
        dataset="mvtec",
        category=category,
        image_size=image_size,
        train=train,
        test=test,
        mask_threshold=MVTEC_MASK_THRESHOLD,
        progress=progress,
    )
