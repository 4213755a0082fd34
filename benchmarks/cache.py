"""Cache keys and cached artifacts of a benchmark: work done once, reused by every unit that needs it.

What is cached, under ``<out>/cache``, and what its key covers:

- ``ear/ear-<key>.pt``: the EAR U-Net of one (data, category, profile, seed), trained on random
  blobs only, so the same U-Net serves every masker and variant (key:
  :func:`fader_kit.pipeline.ear_cache_key` with ``train_masks=None``).
- ``maskers/<name>-<key>.pt``: a fitted masker (``Masker.save``), keyed by masker name, options,
  data, category, image size and seed.
- ``masks/<name>-<key>.pt``: that masker's binary masks of the train and test images, with its
  :class:`~fader_kit.interfaces.MaskerInfo` (so a rerun needs neither the masker nor its weights).

Every key is a digest of the settings it depends on (pydantic ``digest()`` for configurations),
so a changed setting gives a new key and retrains, and an unchanged one reuses.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor

from fader_kit.config import FaderConfig, Profile
from fader_kit.data import SyntheticConfig
from fader_kit.interfaces import MaskerInfo
from fader_kit.pipeline import ear_cache_key

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


def ear_key(data: str, category: str, profile: Profile, seed: int) -> str:
    """Key of the shared EAR U-Net: trained on random blobs only, so no masker enters it."""
    return ear_cache_key(data, category, profile, seed, None)


def work_key(*, ear: str, masker: str, fader: FaderConfig | None, profile: Profile, seed: int) -> str:
    """Everything one results row depends on: the U-Net, the masks, the head configuration and
    FADeR's training settings (plain EAR: no head, so neither enters)."""
    return digest({
        "ear": ear, "masker": masker, "seed": seed, "image_size": profile.image_size,
        "fader": fader.digest() if fader is not None else None,
        "fader_train": profile.fader.digest() if fader is not None else None,
    })


class MaskSet(BaseModel):
    """Binary masks of one category's train and test images, and who made them."""

    model_config = {"arbitrary_types_allowed": True}

    train: Tensor
    test: Tensor
    info: MaskerInfo
    seconds: float = 0.0


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
        return self.root / "maskers" / f"{_safe(name)}-{key}.pt"

    def masks_path(self, name: str, key: str) -> Path:
        return self.root / "masks" / f"{_safe(name)}-{key}.pt"

    def load_masks(self, name: str, key: str) -> MaskSet | None:
        path = self.masks_path(name, key)
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=False)
        return MaskSet(train=payload["train"], test=payload["test"], info=MaskerInfo(**payload["info"]),
                       seconds=float(payload.get("seconds", 0.0)))

    def save_masks(self, name: str, key: str, masks: MaskSet) -> Path:
        return _atomic_save({"train": masks.train.bool(), "test": masks.test.bool(),
                             "info": masks.info.model_dump(mode="json"), "seconds": masks.seconds},
                            self.masks_path(name, key))


def _safe(name: str) -> str:
    """A masker name as a file-name part (third-party names may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
