"""A deterministic generator of MVTec-layout categories: the offline default data.

Two textures and two objects, each with five defect kinds and pixel masks, written as PNG files
in the MVTec layout so that exactly the same loader reads them as reads MVTec AD:

- ``weave`` (texture): a plain-weave fabric of oriented threads; pose varies by a small rotation
  and a random phase (shift) of the thread grid.
- ``cells`` (texture): stone-like Voronoi cells with dark joints and fine grain; every image draws
  new cells, so normal images differ in structure, not only in noise.
- ``washer`` (object): a shaded metal ring with a notch on a dark background; centre and notch
  angle jitter.
- ``plate`` (object): a brushed rectangular part with rounded corners and two bolt holes on a
  light background; position and angle jitter.

Defect kinds (:data:`DEFECT_KINDS`): ``scratch`` (a straight bright or dark line), ``stain`` (a
soft tinted spot), ``hole`` (a missing chunk showing the background, or the backing of a
texture), ``crack`` (a dark jagged polyline), ``contamination`` (a cluster of foreign-coloured
specks).  Every image, normal or not, gets a random brightness gain, a lighting gradient and
pixel noise, applied *after* the defect so that a defect cannot be found by its lack of noise.

Determinism: each image has its own generator, ``np.random.default_rng(SeedSequence(seed,
spawn_key=(category, split, kind, index)))``, so an image depends only on the seed and its own
identity -- not on the order of generation or on how many other images were asked for.  No global
random state is touched.  All drawing is vectorised numpy over the pixel grid.

:func:`ensure_synthetic` generates into a cache folder keyed by generator version, seed and
configuration, writing into a temporary folder that is renamed into place only when complete, so
an interrupted run never leaves a folder that looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fader_kit.data.split import DataError
from fader_kit.data.synthetic_drawing import BASE_SIZE, DEFECTS, RENDERERS, Grid

SYNTHETIC_VERSION = 1
SYNTHETIC_TEXTURES: tuple[str, ...] = ("weave", "cells")
SYNTHETIC_OBJECTS: tuple[str, ...] = ("washer", "plate")
SYNTHETIC_CATEGORIES: tuple[str, ...] = SYNTHETIC_TEXTURES + SYNTHETIC_OBJECTS
DEFECT_KINDS: tuple[str, ...] = ("scratch", "stain", "hole", "crack", "contamination")
CACHE_ENV = "FADER_KIT_CACHE"

_SPLIT_IDS = {"train": 0, "test": 1}


class SyntheticConfig(BaseModel):
    """How much to generate, and at which resolution.

    ``image_size=None`` generates at 128 px, or at the requested loading size when that is larger
    (so a 256 px profile does not train on upsampled 128 px images).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int | None = Field(None, ge=32, le=2048)
    n_train: int = Field(60, ge=1)
    n_test_good: int = Field(100, ge=0)
    n_per_defect: int = Field(20, ge=0)
    defect_kinds: tuple[str, ...] = DEFECT_KINDS

    @field_validator("defect_kinds")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in DEFECT_KINDS]
        if unknown or len(set(v)) != len(v):
            raise ValueError(f"defect_kinds must be distinct names from {DEFECT_KINDS}, got {v}")
        return v

    def resolved_size(self, requested: int | None = None) -> int:
        if self.image_size is not None:
            return self.image_size
        return max(BASE_SIZE, requested or 0)

    def key(self, seed: int, size: int) -> str:
        """Cache folder name: changes whenever anything that shapes the files changes."""
        kinds = "all" if self.defect_kinds == DEFECT_KINDS else "-".join(self.defect_kinds)
        return (
            f"v{SYNTHETIC_VERSION}-seed{seed}-{size}px-train{self.n_train}-good{self.n_test_good}"
            f"-def{self.n_per_defect}-{kinds}"
        )


# --------------------------------------------------------------------------------------------
# Whole images.


def _finish(rng: np.random.Generator, g: Grid, image: np.ndarray) -> np.ndarray:
    """Lighting and sensor variation shared by every image, then 8-bit quantisation."""
    gain = 1.0 + rng.normal(0.0, 0.05) + rng.normal(0.0, 0.012, 3)  # brightness and a slight tint
    slope = rng.normal(0.0, 0.06, 2)
    light = 1.0 + slope[0] * (g.x / g.size - 0.5) + slope[1] * (g.y / g.size - 0.5)
    noisy = image * light[..., None] * gain + rng.normal(0.0, 0.015, image.shape)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _image_rng(seed: int, category: str, split: str, kind: str, index: int) -> np.random.Generator:
    key = (zlib.crc32(category.encode()), _SPLIT_IDS[split], zlib.crc32(kind.encode()), index)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def render_image(
    category: str, size: int, seed: int, split: str, kind: str, index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image ``[size, size, 3]`` uint8 and, for a defect kind, its mask ``[size, size]`` bool.

    ``kind`` is ``"good"`` or one of :data:`DEFECT_KINDS`.  Pure function of its arguments.
    """
    rng = _image_rng(seed, category, split, kind, index)
    g = Grid.of(size)
    scene = RENDERERS[category](rng, g)
    if kind == "good":
        return _finish(rng, g, scene.image), None
    min_area = 10.0 * g.k**2
    for _ in range(50):  # redraw the rare defect that falls almost entirely off the material
        image, mask = DEFECTS[kind](rng, g, scene)
        if mask.sum() >= min_area:
            return _finish(rng, g, image), mask
    raise RuntimeError(f"could not place a {kind} defect on {category} (seed {seed}, index {index})")


def _plan(config: SyntheticConfig) -> list[tuple[str, str, int]]:
    """(split, kind, index) of every image of a category, in writing order."""
    plan = [("train", "good", i) for i in range(config.n_train)]
    plan += [("test", "good", i) for i in range(config.n_test_good)]
    plan += [("test", kind, i) for kind in config.defect_kinds for i in range(config.n_per_defect)]
    return plan


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def write_category(
    folder: Path, category: str, *, seed: int, config: SyntheticConfig, size: int, progress: bool = False
) -> None:
    """Write one category in the MVTec layout into ``folder`` (which must exist and be empty)."""
    plan = _plan(config)
    for split, kind in {(s, k) for s, k, _ in plan}:
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
        if kind != "good":
            (folder / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
    items: Iterable[tuple[str, str, int]] = plan
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(plan, desc=f"synthetic/{category}", unit="img", leave=False)
    for split, kind, index in items:
        image, mask = render_image(category, size, seed, split, kind, index)
        _save_png(image, folder / split / kind / f"{index:03d}.png")
        if mask is not None:
            _save_png(mask.astype(np.uint8) * 255, folder / "ground_truth" / kind / f"{index:03d}_mask.png")
    meta = {
        "generator": "fader_kit.data.synthetic",
        "version": SYNTHETIC_VERSION,
        "category": category,
        "seed": seed,
        "image_size": size,
        **config.model_dump(mode="json", exclude={"image_size"}),
    }
    (folder / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _check(category: str, seed: int) -> None:
    if category not in SYNTHETIC_CATEGORIES:
        raise DataError(
            f"unknown synthetic category {category!r}; synthetic categories: {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"argument seed={seed!r} must be a non-negative int")


def _write_atomically(
    final: Path, category: str, *, seed: int, config: SyntheticConfig, size: int, progress: bool
) -> None:
    """Generate into a hidden temporary sibling, then rename it to ``final`` in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=final.parent))
    try:
        write_category(tmp, category, seed=seed, config=config, size=size, progress=progress)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not another process finishing first: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$FADER_KIT_CACHE``, else ``~/.cache/fader_kit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fader_kit"


def ensure_synthetic(
    category: str,
    *,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    image_size: int | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = False,
) -> Path:
    """The cached folder of one synthetic category, generating it first if it is not complete."""
    config = config or SyntheticConfig()
    _check(category, seed)
    size = config.resolved_size(image_size)
    final = cache_root(cache_dir) / "synthetic" / config.key(int(seed), size) / category
    if not final.is_dir():
        _write_atomically(final, category, seed=int(seed), config=config, size=size, progress=progress)
    return final


def generate_synthetic(
    root: Path | str,
    *,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write synthetic categories into ``root/<category>`` in the MVTec layout; return the folders.

    Load them back with ``load_category("mvtec:" + str(root), category, size)``.  An existing
    category folder is an error unless ``overwrite=True``; each category appears only once fully
    written.
    """
    config = config or SyntheticConfig()
    names = list(SYNTHETIC_CATEGORIES if categories is None else categories)
    for name in names:
        _check(name, seed)
    root = Path(root).expanduser()
    size = config.resolved_size()
    written = []
    for name in names:
        final = root / name
        if final.exists():
            if not overwrite:
                raise DataError(f"{final} already exists; pass overwrite=True to replace it")
            shutil.rmtree(final)
        _write_atomically(final, name, seed=int(seed), config=config, size=size, progress=progress)
        written.append(final)
    return written
