"""Cached artifacts under ``<out>/cache``: work done once, reused by every row that needs it.

- ``ear/ear-<EAR key>.pt``: a trained EAR U-Net (a head-less :class:`~fader_kit.model.fader.FaderModel`).
- ``maskers/<name>-<masks key>.pt``: a fitted masker (``Masker.save``).
- ``masks/<name>-<masks key>.pt``: that masker's binary masks of the train and test images, its
  :class:`~fader_kit.maskers.interfaces.MaskerInfo` (so a rerun needs neither the masker nor its weights),
  and its score maps of the test images (the masker alone as a detector) and of the training
  images (the normal scale of the fused score, :mod:`fader_kit.model.fusion`).

The cache is for speed only: deleting it recomputes, and a results folder's report never reads
it (per-image score details live beside the rows, :class:`~fader_kit.engine.store.ResultStore`).
Every file is written atomically and read with ``weights_only=True``: loading runs no code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor

from fader_kit.maskers.interfaces import MaskerInfo
from fader_kit.util.files import torch_save_atomic
from fader_kit.engine.keys import safe_name


class MaskSet(BaseModel):
    """Binary masks of one category's train and test images, who made them, and (optionally) the
    masker's own score maps, so the masker alone can be scored as a detector."""

    model_config = {"arbitrary_types_allowed": True}

    train: Tensor
    test: Tensor
    info: MaskerInfo
    seconds: float = 0.0
    test_scores: Tensor | None = None  # the masker's score maps of the test images [N, 1, H, W] (float16)
    train_scores: Tensor | None = None  # ... and of the (normal) training images: the fused score's normal scale
    timings: dict[str, float] = {}  # the fit's wall and CPU seconds ("fit_s", "fit_cpu_s") when it was fitted


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
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return MaskSet(train=payload["train"], test=payload["test"], info=MaskerInfo(**payload["info"]),
                       seconds=float(payload.get("seconds", 0.0)), test_scores=payload.get("test_scores"),
                       train_scores=payload.get("train_scores"), timings=dict(payload.get("timings") or {}))

    def save_masks(self, name: str, key: str, masks: MaskSet) -> Path:
        def half(t: Tensor | None) -> Tensor | None:
            return t.half() if t is not None else None

        return torch_save_atomic({"train": masks.train.bool(), "test": masks.test.bool(),
                                  "info": masks.info.model_dump(mode="json"), "seconds": masks.seconds,
                                  "test_scores": half(masks.test_scores), "train_scores": half(masks.train_scores),
                                  "timings": dict(masks.timings)},
                                 self.masks_path(name, key))
