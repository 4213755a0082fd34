"""The stages of the main job, as plain functions: masks -> EAR U-Net -> FADeR -> maps -> metrics.

Each function takes tensors and settings and returns tensors or models; none caches or logs.
:class:`fader_kit.engine.workbench.CategoryWorkbench` composes them (with caching) for every
command, and :class:`fader_kit.deploy.detector.Detector` for deployment.

The training sequence -- fit the masker, then the EAR U-Net (:func:`ear_stage`), then the FADeR
head (:func:`fader_stage`), both together :func:`train_sequence` -- is written here once: the
benchmark's workbench calls the two stages (it keeps one U-Net for every head of a category) and
``fader-kit fit`` calls :func:`train_sequence`, so every head variant that ``evaluate`` trains,
``fit`` trains the same way (the same masks, score maps and masker threshold reach the head).
"""
from __future__ import annotations

import copy
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel
from torch import Tensor

from fader_kit.model.config import FaderConfig, Profile, TrainConfig
from fader_kit.model.diagnostics import Diagnostics, head_diagnostics, mask_diagnostics
from fader_kit.model.fader import FaderModel, wrap_with_fader
from fader_kit.errors import ConfigError
from fader_kit.maskers.interfaces import Masker, MaskerContractError
from fader_kit.model.metrics import aupro, f1_max, image_auroc, pixel_auroc
from fader_kit.model.training import paste_pseudo_anomalies, seeded_init, train_fader, train_reconstructor
from fader_kit.model.unet import EARUNet
from fader_kit.util.batching import device_batches
from fader_kit.model.variants import head_strategies


class Metrics(BaseModel):
    image_auroc: float
    pixel_auroc: float
    pixel_aupro: float | None = None
    image_f1_max: float | None = None


def environment() -> dict[str, str]:
    """Versions that a result depends on, stored beside it."""
    from fader_kit.version import __version__

    return {
        "fader_kit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "none",
    }


# -- stages ---------------------------------------------------------------------------------------
@torch.no_grad()
def compute_masks(
    masker: Masker, images: Tensor, *, batch_size: int = 8, device: torch.device | str = "cpu", progress: bool = False,
    desc: str = "masks",
) -> Tensor:
    """M_B for every image, ``[N, 1, H, W]`` bool on the CPU (computed once, reused by every model)."""
    out = []
    for (x,) in device_batches(images, batch_size=batch_size, device=device, progress=progress, desc=desc):
        m = masker.mask(x)
        if m.shape != (x.shape[0], 1, *x.shape[-2:]):
            raise MaskerContractError(
                f"masker {masker.info.name!r} returned a mask of shape {list(m.shape)} for images "
                f"{list(x.shape)}; expected [B, 1, H, W]"
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
    *, seed: int, device: torch.device | str, progress: bool = False, scores: Tensor | None = None,
    score_threshold: float | None = None,
) -> tuple[FaderModel, dict[str, Any]]:
    """Wrap a *copy* of ``unet`` with a fresh FADeR head and train it (``scores``: the masker's score maps
    of ``train_images``, for a head that reads them; ``score_threshold``: the masker's threshold, for
    gates that close there)."""
    t0 = time.perf_counter()
    model = seeded_init(lambda: wrap_with_fader(copy.deepcopy(unet), None, fader_config), seed + 1)
    history = train_fader(model, train_images, masks, train_config, seed=seed, device=device, progress=progress,
                          scores=scores, score_threshold=score_threshold)
    return model, {"seconds": time.perf_counter() - t0, "final_ranking_loss": history[-1]["ranking_loss"]}


def fit_masker(masker: Masker, images: Tensor, *, seed: int, device: torch.device | str,
               progress: bool = False) -> None:
    """Fit ``masker`` on the normal training images (moved to ``device`` when there are at most 4096)."""
    masker.fit(images.to(device) if images.shape[0] <= 4096 else images, seed=seed, progress=progress)


def ear_stage(
    images: Tensor, masks: Callable[[], Tensor], profile: Profile, *, ear_masks: str, seed: int,
    device: torch.device | str, progress: bool = False, cache: Path | None = None,
) -> tuple[EARUNet, dict[str, Any]]:
    """The EAR U-Net of the sequence: trained on random blobs alone (``ear_masks="blobs"``: one U-Net
    serves every masker) or on the masker's masks of ``images`` united with blobs (``"masker"``).
    ``masks`` is called only in the second case, so a U-Net trained on blobs never waits for a masker."""
    if ear_masks not in ("blobs", "masker"):
        raise ConfigError(f"argument --ear-masks {ear_masks!r}: expected 'blobs' or 'masker'")
    return train_ear(images, masks() if ear_masks == "masker" else None, profile, seed=seed, device=device,
                     progress=progress, cache=cache)


def gate_threshold(head: FaderConfig, masker: Callable[[], Masker] | None, name: str) -> float | None:
    """The fitted masker's threshold, for a gate strategy that reads it (one that ends the gates there);
    else None.  ``masker`` gives the fitted masker (called only for such gates; None: the masks come from
    no masker)."""
    if not head_strategies(head).reads_threshold:
        return None
    if masker is None:
        raise ConfigError(f"mask source {name} is not a masker: gates {list(head.gates)} need a masker's threshold")
    threshold = masker().threshold
    if threshold is None:
        raise ConfigError(f"masker {name} sets no threshold (it masks by its own rule): gates {list(head.gates)} "
                          "cannot be used with it")
    return float(threshold)


def fader_stage(
    unet: EARUNet, images: Tensor, masks: Tensor | None, head: FaderConfig, train: TrainConfig, *, seed: int,
    device: torch.device | str, progress: bool = False, scores: Tensor | None = None,
    masker: Callable[[], Masker] | None = None, masker_name: str = "",
) -> tuple[FaderModel, dict[str, Any]]:
    """The FADeR head of the sequence on a copy of ``unet``: ``scores`` (the masker's score maps of
    ``images``) reach a head that reads them, and the fitted masker's threshold (from ``masker``) a
    head whose gates end there."""
    return train_fader_on(unet, images, masks, head, train, seed=seed, device=device, progress=progress,
                          scores=scores, score_threshold=gate_threshold(head, masker, masker_name))


def train_sequence(
    images: Tensor, masks: Tensor, head: FaderConfig, profile: Profile, *, masker: Masker, masker_name: str,
    ear_masks: str, seed: int, device: torch.device | str, scores: Tensor | None = None, progress: bool = False,
    train: TrainConfig | None = None,
) -> tuple[FaderModel, dict[str, dict[str, Any]]]:
    """EAR U-Net then FADeR head on normal ``images`` with the fitted ``masker``'s ``masks`` (and
    ``scores``, its score maps, for a head that reads them): :func:`ear_stage` then :func:`fader_stage`,
    as the benchmark trains them.  Returns the model and ``{"ear": ..., "fader": ...}`` (seconds, losses)."""
    unet, ear = ear_stage(images, lambda: masks, profile, ear_masks=ear_masks, seed=seed, device=device,
                          progress=progress)
    model, fader = fader_stage(unet, images, masks, head, train or profile.fader, seed=seed, device=device,
                               progress=progress, scores=scores, masker=lambda: masker, masker_name=masker_name)
    return model, {"ear": ear, "fader": fader}


@torch.no_grad()
def diagnose(
    model: FaderModel, images: Tensor, masks: Tensor, labels: Tensor, gt_masks: Tensor, *, batch_size: int,
    device: torch.device | str, scores: Tensor | None = None,
) -> Diagnostics:
    """Mask coverage of the defects, and -- for a model with a head -- where its gates close
    (see :mod:`fader_kit.model.diagnostics`)."""
    mask = mask_diagnostics(masks, gt_masks, labels)
    if model.head is None:
        return Diagnostics(mask=mask)
    model.to(device).eval()
    preds, grids = [], []
    for x, mb, *s in device_batches(images, masks, *_scores_for(model, scores), batch_size=batch_size, device=device):
        p, g = model.head_outputs(x, mb, s[0] if s else None)
        preds.append(p.cpu())
        grids.append(g.cpu())
    head = head_diagnostics(torch.cat(preds), torch.cat(grids), masks, gt_masks, labels, model.patch_size)
    return Diagnostics(mask=mask, head=head)


@torch.no_grad()
def anomaly_maps(
    model: FaderModel, images: Tensor, masks: Tensor, *, batch_size: int, device: torch.device | str,
    progress: bool = False, desc: str = "scoring", scores: Tensor | None = None,
) -> Tensor:
    """Smoothed MSGMS anomaly maps ``[N, 1, H, W]`` (CPU) with the given binary masks (``scores``: the
    masker's score maps, passed on only to a head that reads them)."""
    model.to(device).eval()
    return torch.cat([model.anomaly_map(x, mb, scores=s[0] if s else None).cpu() for x, mb, *s in device_batches(
        images, masks, *_scores_for(model, scores), batch_size=batch_size, device=device, progress=progress,
        desc=desc)])


def _scores_for(model: FaderModel, scores: Tensor | None) -> tuple[Tensor, ...]:
    """``(scores,)`` for a model whose head reads the masker's score map, else ``()`` (not moved)."""
    return (scores,) if scores is not None and model.needs_scores else ()


def metrics_from_maps(maps: Tensor, labels: Tensor, gt_masks: Tensor, *, extra: bool = True) -> Metrics:
    """Image AUROC (max of the map), pixel AUROC, and optionally pixel AUPRO and image F1-max."""
    scores = maps.flatten(1).amax(dim=1)
    return Metrics(
        image_auroc=image_auroc(scores, labels),
        pixel_auroc=pixel_auroc(maps, gt_masks),
        pixel_aupro=aupro(maps, gt_masks) if extra else None,
        image_f1_max=f1_max(scores, labels) if extra else None,
    )


@torch.no_grad()
def masker_score_maps(
    masker: Masker, images: Tensor, *, batch_size: int = 8, device: torch.device | str = "cpu", progress: bool = False,
) -> Tensor:
    """The masker's own score maps ``[N, 1, H, W]`` (float, CPU): the masker alone as a detector."""
    out = []
    for (x,) in device_batches(images, batch_size=batch_size, device=device, progress=progress, desc="masker scores"):
        s = masker.score_map(x)
        if s.shape != (x.shape[0], 1, *x.shape[-2:]):
            raise MaskerContractError(
                f"masker {masker.info.name!r} returned a score map of shape {list(s.shape)} for images "
                f"{list(x.shape)}; expected [B, 1, H, W]")
        out.append(s.float().cpu())
    return torch.cat(out)


#: pseudo-anomalies of the fused score's ``pseudo`` rule: FADeR's training kind (a colour-shifted square of
#: another image, this share of the area), one per normal training image
PSEUDO_FUSION_AREA = 0.04


@torch.no_grad()
def pseudo_anomaly_maps(
    model: FaderModel, masker: Masker, images: Tensor, *, seed: int, batch_size: int, device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """The model's anomaly maps and the masker's score maps of ``images`` (normal training images) with
    one pseudo-anomaly pasted into each, masked and scored as a test image is: what the fused score's
    ``pseudo`` rule chooses its mix on (:func:`fader_kit.model.fusion.fit_fusion`).  The score maps pass
    through float16, as the mask cache keeps every other score map."""
    pasted, _ = paste_pseudo_anomalies(images, 1.0, PSEUDO_FUSION_AREA, torch.Generator().manual_seed(10_000 + seed))
    masks = compute_masks(masker, pasted, batch_size=batch_size, device=device, desc="masks (pseudo-anomalies)")
    scores = masker_score_maps(masker, pasted, batch_size=batch_size, device=device).half().float()
    maps = anomaly_maps(model, pasted, masks, batch_size=batch_size, device=device, scores=scores)
    return maps, scores
