"""The main job as composable stages: masks -> EAR U-Net -> FADeR -> metrics.

``evaluate_category`` is what ``fader-kit evaluate`` runs; the benchmark runner calls the same
stages so that a number in a table and a number from the CLI come from one piece of code.
Plain EAR and FADeR are always measured on the same trained U-Net and the same masks; FADeR
fine-tunes a *copy* of the decoder, so the EAR row is untouched by it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor
from tqdm.auto import tqdm

from .config import FaderConfig, Profile, TrainConfig
from .fader import FaderModel, wrap_with_fader
from .interfaces import Masker, MaskerInfo
from .metrics import aupro, f1_max, image_auroc, pixel_auroc
from .training import seeded_init, train_fader, train_reconstructor
from .unet import EARUNet


class Metrics(BaseModel):
    image_auroc: float
    pixel_auroc: float
    pixel_aupro: float | None = None
    image_f1_max: float | None = None


class EvaluationResult(BaseModel):
    data: str
    category: str
    masker: MaskerInfo
    profile: str
    seed: int
    device: str
    ear: Metrics
    fader: Metrics
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)

    def delta(self) -> dict[str, float]:
        return {k: getattr(self.fader, k) - getattr(self.ear, k) for k in ("image_auroc", "pixel_auroc")}


def environment() -> dict[str, str]:
    """Versions that a result depends on, stored beside it."""
    import fader_kit

    return {
        "fader_kit": fader_kit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "none",
    }


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON through a temporary file and a rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    tmp.replace(path)
    return path


# -- stages ---------------------------------------------------------------------------------------
@torch.no_grad()
def compute_masks(
    masker: Masker, images: Tensor, *, batch_size: int = 8, device: torch.device | str = "cpu", progress: bool = False,
    desc: str = "masks",
) -> Tensor:
    """M_B for every image, ``[N, 1, H, W]`` bool on the CPU (computed once, reused by every model)."""
    out = []
    for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        m = masker.mask(images[i : i + batch_size].to(device))
        if m.shape != (min(batch_size, images.shape[0] - i), 1, *images.shape[-2:]):
            raise ValueError(
                f"masker {masker.info.name!r} returned a mask of shape {list(m.shape)} for images "
                f"{list(images[i:i + batch_size].shape)}; expected [B, 1, H, W]"
            )
        out.append(m.bool().cpu())
    return torch.cat(out)


def train_ear(
    train_images: Tensor, masks: Tensor | None, profile: Profile, *, seed: int, device: torch.device | str,
    progress: bool = False, cache: Path | None = None,
) -> tuple[EARUNet, dict[str, Any]]:
    """Train the EAR U-Net (or load it from ``cache`` when that file exists)."""
    if cache is not None and cache.is_file():
        model = FaderModel.load(cache).reconstructor
        return model.to(device).eval(), {"reused": True, "path": str(cache)}
    t0 = time.perf_counter()
    unet = seeded_init(lambda: EARUNet(profile.unet), seed)
    history = train_reconstructor(
        unet, train_images, masks, profile.ear, patch_size=profile.fader_head.patch_size, seed=seed,
        device=device, progress=progress,
    )
    info = {"reused": False, "seconds": time.perf_counter() - t0, "final_loss": history[-1]["loss"]}
    if cache is not None:
        FaderModel(unet, None, profile.fader_head, head=None).save(cache)
        info["path"] = str(cache)
    return unet, info


def train_fader_on(
    unet: EARUNet, train_images: Tensor, masks: Tensor | None, fader_config: FaderConfig, train_config: TrainConfig,
    *, seed: int, device: torch.device | str, progress: bool = False,
) -> tuple[FaderModel, dict[str, Any]]:
    """Wrap a *copy* of ``unet`` with a fresh FADeR head and train it."""
    t0 = time.perf_counter()
    model = seeded_init(lambda: wrap_with_fader(copy.deepcopy(unet), None, fader_config), seed + 1)
    history = train_fader(model, train_images, masks, train_config, seed=seed, device=device, progress=progress)
    return model, {"seconds": time.perf_counter() - t0, "final_ranking_loss": history[-1]["ranking_loss"]}


@torch.no_grad()
def anomaly_maps(
    model: FaderModel, images: Tensor, masks: Tensor, *, batch_size: int, device: torch.device | str,
    progress: bool = False, desc: str = "scoring",
) -> Tensor:
    """Smoothed MSGMS anomaly maps ``[N, 1, H, W]`` (CPU) with the given binary masks."""
    model.to(device).eval()
    out = []
    for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.anomaly_map(images[i : i + batch_size].to(device), masks[i : i + batch_size].to(device)).cpu())
    return torch.cat(out)


def metrics_from_maps(maps: Tensor, labels: Tensor, gt_masks: Tensor, *, extra: bool = True) -> Metrics:
    """Image AUROC (max of the map), pixel AUROC, and optionally pixel AUPRO and image F1-max."""
    scores = maps.flatten(1).amax(dim=1)
    return Metrics(
        image_auroc=image_auroc(scores, labels),
        pixel_auroc=pixel_auroc(maps, gt_masks),
        pixel_aupro=aupro(maps, gt_masks) if extra else None,
        image_f1_max=f1_max(scores, labels) if extra else None,
    )


# -- the main job ---------------------------------------------------------------------------------
EarMasks = Literal["masker", "blobs"]


def evaluate_category(
    data: str,
    category: str,
    masker: Masker,
    profile: Profile,
    *,
    out: Path,
    device: torch.device | str = "cpu",
    seed: int = 0,
    ear_masks: EarMasks = "masker",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationResult:
    """Fit the masker, train (or reuse) the EAR U-Net, train FADeR, measure both on the test set.

    Everything is written under ``out``: ``ear-<key>.pt`` (reused on a rerun with the same
    settings), ``fader.pt``, ``masker.pt`` and finally ``metrics.json`` -- written last and
    atomically, so its presence means the run completed.
    """
    from .data import load_category

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
    timings: dict[str, float] = {}
    t = time.perf_counter()
    split = load_category(data, category, profile.image_size, seed=seed, progress=progress)
    timings["load_data"] = time.perf_counter() - t
    log(f"data: {data} / {category}: {split.train.shape[0]} train, {split.test.shape[0]} test images at {profile.image_size}px")

    t = time.perf_counter()
    masker.to(device)
    masker.fit(split.train.to(device), seed=seed, progress=progress)
    masker.save(out / "masker.pt")
    train_masks = compute_masks(masker, split.train, batch_size=profile.eval_batch_size, device=device, progress=progress, desc="masks (train)")
    test_masks = compute_masks(masker, split.test, batch_size=profile.eval_batch_size, device=device, progress=progress, desc="masks (test)")
    timings["masker"] = time.perf_counter() - t
    log(f"masker: {masker.info.name} (weights: {masker.info.weights}); "
        f"mean masked fraction train {train_masks.float().mean():.3f}, test {test_masks.float().mean():.3f}")

    key = ear_cache_key(data, category, profile, seed, train_masks if ear_masks == "masker" else None)
    unet, ear_info = train_ear(
        split.train, train_masks if ear_masks == "masker" else None, profile, seed=seed, device=device,
        progress=progress, cache=out / f"ear-{key}.pt",
    )
    timings["ear_train"] = float(ear_info.get("seconds", 0.0))
    log("EAR U-Net: " + ("reused " + ear_info["path"] if ear_info["reused"] else f"trained in {ear_info['seconds']:.1f}s"))

    fader, fader_info = train_fader_on(
        unet, split.train, train_masks, profile.fader_head, profile.fader, seed=seed, device=device, progress=progress
    )
    fader.save(out / "fader.pt")
    timings["fader_train"] = fader_info["seconds"]
    log(f"FADeR head: trained in {fader_info['seconds']:.1f}s")

    t = time.perf_counter()
    ear_model = FaderModel(unet, None, profile.fader_head, head=None)
    ear_maps = anomaly_maps(ear_model, split.test, test_masks, batch_size=profile.eval_batch_size, device=device, progress=progress, desc="scoring EAR")
    fader_maps = anomaly_maps(fader, split.test, test_masks, batch_size=profile.eval_batch_size, device=device, progress=progress, desc="scoring FADeR")
    ear_metrics = metrics_from_maps(ear_maps, split.labels, split.masks)
    fader_metrics = metrics_from_maps(fader_maps, split.labels, split.masks)
    timings["evaluate"] = time.perf_counter() - t

    result = EvaluationResult(
        data=str(data), category=category, masker=masker.info, profile=profile.name, seed=seed,
        device=str(device), ear=ear_metrics, fader=fader_metrics, timings=timings, environment=environment(),
    )
    write_json_atomic(out / "metrics.json", result.model_dump(mode="json"))
    return result


def ear_cache_key(data: str, category: str, profile: Profile, seed: int, train_masks: Tensor | None) -> str:
    """Everything the EAR U-Net depends on: data, sizes, training config, seed and -- when it is
    trained on the masker's masks -- the masks themselves (content hash), so a changed masker
    setting retrains while an unchanged one reuses."""
    parts = {
        "data": str(data), "category": category, "image_size": profile.image_size, "unet": profile.unet.digest(),
        "ear": profile.ear.digest(), "m": profile.fader_head.patch_size, "seed": seed,
        "masks": hashlib.sha256(train_masks.numpy().tobytes()).hexdigest() if train_masks is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


__all__ = [
    "EvaluationResult", "Metrics", "anomaly_maps", "compute_masks", "ear_cache_key", "environment", "evaluate_category",
    "metrics_from_maps", "train_ear", "train_fader_on", "write_json_atomic",
]
