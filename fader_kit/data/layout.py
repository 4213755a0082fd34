"""The MVTec folder layout, shared by MVTec AD, converted VisA and the synthetic generator.

``<category>/train/good/*``, ``<category>/test/<defect>/*`` (``good`` = normal) and
``<category>/ground_truth/<defect>/<stem><suffix>``.  :func:`scan_layout` turns a folder into a
list of samples, checking everything that can be checked without decoding pixels (so a missing
mask fails in milliseconds, not after minutes of decoding); :func:`build_split` decodes the
samples into a :class:`CategorySplit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fader_kit.data.imageio import list_images, parallel_map, read_image, read_mask
from fader_kit.data.split import CategorySplit, DataError

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One test image: its defect type (``good`` for normal) and its mask file (None if normal)."""

    image: Path
    defect: str
    mask: Path | None = None


def looks_like_layout(category_dir: Path) -> bool:
    """True when ``category_dir`` has the ``train/good`` folder of the MVTec layout."""
    return (category_dir / "train" / GOOD).is_dir()


def scan_layout(category_dir: Path, *, mask_suffixes: tuple[str, ...]) -> tuple[list[Path], list[Sample]]:
    """List the train images and test samples of one category folder in the MVTec layout.

    ``mask_suffixes`` are tried in order for each defect image: ``("_mask.png",)`` for MVTec AD,
    ``(".png", "_mask.png")`` for converted VisA (anomalib names the mask like the image).
    Test samples are ordered normal first, then defect types alphabetically, then by file name.
    """
    train_dir = category_dir / "train" / GOOD
    if not train_dir.is_dir():
        raise DataError(f"missing train folder {train_dir} (expected the MVTec layout <category>/train/good)")
    train = list_images(train_dir)
    if not train:
        raise DataError(f"train folder {train_dir} holds no images")

    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DataError(f"missing test folder {test_dir} (expected <category>/test/<defect type>)")
    kinds = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    kinds.sort(key=lambda k: k != GOOD)  # stable: "good" first, the rest stay alphabetical
    test: list[Sample] = []
    for kind in kinds:
        for image in list_images(test_dir / kind):
            if kind == GOOD:
                test.append(Sample(image, GOOD))
                continue
            candidates = [category_dir / "ground_truth" / kind / f"{image.stem}{s}" for s in mask_suffixes]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None:
                looked = " or ".join(str(c) for c in candidates)
                raise DataError(f"defect image {image} has no mask: looked for {looked}")
            test.append(Sample(image, kind, mask))
    if not test:
        raise DataError(f"test folder {test_dir} holds no images")
    return train, test


def _stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """[N, S, S, 3] uint8 -> [N, 3, S, S] float32 in [0, 1] with a single conversion."""
    batch = torch.from_numpy(np.stack(arrays))
    return batch.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


def build_split(
    *,
    dataset: str,
    category: str,
    image_size: int,
    train: list[Path],
    test: list[Sample],
    mask_threshold: int,
    progress: bool = False,
) -> CategorySplit:
    """Decode ``train`` and ``test`` into a :class:`CategorySplit` at ``image_size``.

    Masks are binarised as ``value > mask_threshold`` (127 for MVTec's 0/255 masks, 0 for VisA's
    defect-id masks) and must match their image's original size.
    """
    size = image_size

    def load_train(path: Path) -> np.ndarray:
        return read_image(path, size)[0]

    def load_test(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, original = read_image(sample.image, size)
        if sample.mask is None:
            return image, np.zeros((size, size), dtype=bool)
        mask = read_mask(sample.mask, size, threshold=mask_threshold, image_path=sample.image, image_size=original)
        return image, mask

    tag = f"{dataset}/{category}"
    train_arrays = parallel_map(load_train, train, progress=progress, desc=f"{tag} train")
    test_pairs = parallel_map(load_test, test, progress=progress, desc=f"{tag} test")

    masks = torch.from_numpy(np.stack([m for _, m in test_pairs]))[:, None]
    labels = torch.tensor([0 if s.defect == GOOD else 1 for s in test], dtype=torch.long)
    return CategorySplit(
        dataset=dataset,
        category=category,
        image_size=size,
        train=_stack_images(train_arrays),
        test=_stack_images([img for img, _ in test_pairs]),
        labels=labels,
        masks=masks,
        test_paths=[str(s.image) for s in test],
        defect_types=[s.defect for s in test],
        train_paths=[str(p) for p in train],
    )
