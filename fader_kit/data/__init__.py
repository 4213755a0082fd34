"""Data sets as tensors: MVTec AD, VisA and the built-in synthetic generator.

One entry point, :func:`load_category`, whatever the source::

    split = load_category("synthetic", "washer", 128)        # generated offline, cached
    split = load_category("mvtec:/data/mvtec_ad", "screw", 256)
    split = load_category("visa:/data/VisA", "pcb1", 256)     # released or converted layout

Images come back as ``[N, 3, S, S]`` float32 in ``[0, 1]`` (grayscale expanded to RGB, every size
resized to ``S``), masks as ``[M, 1, S, S]`` bool.  Bad input raises :class:`DataError` naming
the file, folder or argument.
"""
from __future__ import annotations

from pathlib import Path

from fader_kit.data.imageio import IMAGE_EXTENSIONS
from fader_kit.data.layout import build_split, scan_layout
from fader_kit.data.mvtec import MVTEC_CATEGORIES, MVTEC_OBJECTS, MVTEC_TEXTURES, load_mvtec, mvtec_categories
from fader_kit.data.spec import DataSpec, parse_data_spec
from fader_kit.data.split import CategorySplit, DataError
from fader_kit.data.synthetic import (
    DEFECT_KINDS,
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_OBJECTS,
    SYNTHETIC_TEXTURES,
    SyntheticConfig,
    cache_root,
    ensure_synthetic,
    generate_synthetic,
)
from fader_kit.data.visa import VISA_CATEGORIES, detect_visa_layout, load_visa, visa_categories

__all__ = [
    "CategorySplit",
    "DataError",
    "DataSpec",
    "DEFECT_KINDS",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "MVTEC_OBJECTS",
    "MVTEC_TEXTURES",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_OBJECTS",
    "SYNTHETIC_TEXTURES",
    "SyntheticConfig",
    "VISA_CATEGORIES",
    "cache_root",
    "detect_visa_layout",
    "generate_synthetic",
    "is_texture",
    "list_categories",
    "load_category",
    "parse_data_spec",
]


def _check_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 4096:
        raise DataError(f"argument image_size={image_size!r} must be an int between 8 and 4096")
    return image_size


def load_category(
    data: str | DataSpec,
    category: str,
    image_size: int,
    *,
    seed: int = 0,
    cache_dir: Path | str | None = None,
    progress: bool = False,
    synthetic: SyntheticConfig | None = None,
) -> CategorySplit:
    """Load one category of ``data`` (``"synthetic"``, ``"mvtec:PATH"``, ``"visa:PATH"``).

    ``seed`` selects the synthetic data (real data sets ignore it); ``cache_dir`` is where
    synthetic categories are generated (default ``$FADER_KIT_CACHE`` or ``~/.cache/fader_kit``);
    ``synthetic`` overrides the generator's counts.  ``progress`` shows tqdm bars.
    """
    spec = parse_data_spec(data)
    size = _check_size(image_size)
    if not isinstance(category, str) or not category:
        raise DataError(f"argument category={category!r} must be a non-empty category name")
    if spec.kind == "mvtec":
        assert spec.path is not None
        return load_mvtec(spec.path, category, size, progress=progress)
    if spec.kind == "visa":
        assert spec.path is not None
        return load_visa(spec.path, category, size, progress=progress)
    folder = ensure_synthetic(
        category, seed=seed, config=synthetic, image_size=size, cache_dir=cache_dir, progress=progress
    )
    train, test = scan_layout(folder, mask_suffixes=("_mask.png",))
    return build_split(
        dataset="synthetic",
        category=category,
        image_size=size,
        train=train,
        test=test,
        mask_threshold=127,
        progress=progress,
    )


def list_categories(data: str | DataSpec) -> list[str]:
    """Category names of a data set.

    ``"mvtec"`` / ``"visa"`` without a path give the official names (15 and 12); with a path,
    those present in the folder (official order), followed by any other category folder in the
    layout.  ``"synthetic"`` gives the generator's categories.
    """
    spec = parse_data_spec(data, require_path=False)
    if spec.kind == "mvtec":
        return mvtec_categories(spec.path)
    if spec.kind == "visa":
        return visa_categories(spec.path)
    return list(SYNTHETIC_CATEGORIES)


def is_texture(category: str) -> bool:
    """True for texture categories (MVTec's five and the synthetic ones): maskers that pool
    statistics over positions want to know, since textures have no canonical layout."""
    return category in MVTEC_TEXTURES or category in SYNTHETIC_TEXTURES
