"""Cache keys and cached artifacts: work done once, reused by every result that needs it.

One scheme for ``fader-kit evaluate`` and ``fader-kit bench`` alike (both run the stages of
:mod:`fader_kit.pipeline` through :class:`~fader_kit.pipeline.CategoryWorkbench`), so the same
settings give the same files and the same numbers whichever command asked.

What is cached, under ``<out>/cache``, and what its key covers:

- ``ear/ear-<key>.pt``: the EAR U-Net of one (data, category, profile, seed).  By default it is
  trained on random blobs only, so the same U-Net serves every masker and variant (the paper
  attaches FADeR to *one* pre-trained EAR U-Net and swaps maskers "without any change of the
  pre-trained U-Net", Sec. 4.6); trained on a masker's masks, the masker's key enters its key.
- ``maskers/<name>-<key>.pt``: a fitted masker (``Masker.save``), keyed by masker name, options,
  data, category, image size and seed.
- ``masks/<name>-<key>.pt``: that masker's binary masks of the train and test images, with its
  :class:`~fader_kit.interfaces.MaskerInfo` (so a rerun needs neither the masker nor its weights),
  and its score maps of the test images (the masker alone as a detector) and of the training images
  (the normal scale of the fused score, :mod:`fader_kit.fusion`).
- ``scores/<work key>.pt``: per-test-image scores and per-image pixel-score histograms of one
  evaluated model (:class:`~fader_kit.stats.ScoreDetail`): what the paired bootstrap over seeds
  and test images needs, without keeping full anomaly maps; ``<work key>.fused.pt`` the same for
  that model's fused score; ``<masker key>.alone.pt`` the same for the masker's own score map.

Every key is a digest of the settings it depends on (pydantic ``digest()`` for configurations),
so a changed setting gives a new key and retrains, and an unchanged one reuses.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import Tensor

if TYPE_CHECKING:
    from .stats import ScoreDetail

from .config import FaderConfig, Profile
from .data import SyntheticConfig
from .interfaces import MaskerInfo

# Options that choose *where* a masker runs, not what it computes: left out of its key.
NON_SEMANTIC_OPTIONS = frozenset({"device", "progress"})


def digest(payload: Any) -> str:
    """Short stable hash of a JSON-serialisable payload (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_key(data: str, synthetic: SyntheticConfig | None = None) -> str:
    """The data source as it enters keys: the spec string, plus the generator settings when
    synthetic data is generated with non-default counts."""
    return str(data) if synthetic is None else f"{data}#{digest(synthetic.model_dump(mode='json'))}"


def masker_key(name: str, options: dict[str, Any], data: str, category: str, image_size: int, seed: int) -> str:
    """Key of a fitted masker and of its masks."""
    opts = {k: v for k, v in options.items() if k not in NON_SEMANTIC_OPTIONS}
    return digest({"masker": name, "options": opts, "data": data, "category": category,
                   "image_size": image_size, "seed": seed})


def ear_key(data: str, category: str, profile: Profile, seed: int, masks_from: str | None = None) -> str:
    """Key of the EAR U-Net: data, sizes, U-Net and training configuration, patch size, seed,
    and -- when it is trained on a masker's masks instead of blobs only -- that masker's key."""
    return digest({
        "data": str(data), "category": category, "image_size": profile.image_size, "unet": profile.unet.digest(),
        "ear": profile.ear.digest(), "m": profile.fader_head.patch_size, "seed": seed, "masks_from": masks_from,
    })


def work_key(*, ear: str, masker: str, fader: FaderConfig | None, profile: Profile, seed: int) -> str:
    """Everything one results row depends on: the U-Net, the masks, the head configuration and
    FADeR's training settings (plain EAR: no head, so neither enters)."""
    return digest({
        "ear": ear, "masker": masker, "seed": seed, "image_size": profile.image_size,
        "fader": fader.digest() if fader is not None else None,
        "fader_train": profile.fader.digest() if fader is not None else None,
    })


def fused_key(work_key: str) -> str:
    """Key of the fused score's detail (:mod:`fader_kit.fusion`) of the row ``work_key``."""
    return f"{work_key}.fused"


def alone_key(masker_key: str) -> str:
    """Key of the score detail of the masker alone (its own score map as the detector)."""
    return f"{masker_key}.alone"


class MaskSet(BaseModel):
    """Binary masks of one category's train and test images, who made them, and (optionally)
    the masker's own test score maps' detail, so the masker alone can be scored as a detector."""

    model_config = {"arbitrary_types_allowed": True}

    train: Tensor
    test: Tensor
    info: MaskerInfo
    seconds: float = 0.0
    test_scores: Tensor | None = None  # the masker's score maps of the test images [N, 1, H, W] (float16)
    train_scores: Tensor | None = None  # ... and of the (normal) training images: the fused score's normal scale


def _atomic_save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


class WorkCache:
    """Paths and (de)serialisation of the cached artifacts under ``<out>/cache``."""

    def __init__(self, out: str | Path) -> None:
        self.root = Path(out) / "cache"

    def ear_path(self, key: str) -> Path:
        return self.root / "ear" / f"ear-{key}.pt"

    def masker_path(self, name: str, key: str) -> Path:
        return self.root / "maskers" / f"{safe_name(name)}-{key}.pt"

    def masks_path(self, name: str, key: str) -> Path:
        return self.root / "masks" / f"{safe_name(name)}-{key}.pt"

    def load_masks(self, name: str, key: str) -> MaskSet | None:
        path = self.masks_path(name, key)
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=False)
        return MaskSet(train=payload["train"], test=payload["test"], info=MaskerInfo(**payload["info"]),
                       seconds=float(payload.get("seconds", 0.0)), test_scores=payload.get("test_scores"),
                       train_scores=payload.get("train_scores"))

    def save_masks(self, name: str, key: str, masks: MaskSet) -> Path:
        def half(t: Tensor | None) -> Tensor | None:
            return t.half() if t is not None else None

        return _atomic_save({"train": masks.train.bool(), "test": masks.test.bool(),
                             "info": masks.info.model_dump(mode="json"), "seconds": masks.seconds,
                             "test_scores": half(masks.test_scores), "train_scores": half(masks.train_scores)},
                            self.masks_path(name, key))

    def scores_path(self, work_key: str) -> Path:
        return self.root / "scores" / f"{work_key}.pt"

    def save_scores(self, work_key: str, detail: "ScoreDetail") -> Path:
        return _atomic_save(detail.to_dict(), self.scores_path(work_key))

    def load_scores(self, work_key: str) -> "ScoreDetail | None":
        """The cached detail of ``work_key`` (``<work key>.fused`` for the fused score of that row)."""
        from .stats import ScoreDetail

        path = self.scores_path(work_key)
        if not path.is_file():
            return None
        return ScoreDetail.from_dict(torch.load(path, map_location="cpu", weights_only=False))


def safe_name(name: str) -> str:
    """A masker name as a file-name part (third-party names may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
