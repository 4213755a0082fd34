"""The main job as composable stages: masks -> EAR U-Net -> FADeR -> metrics.

:class:`CategoryWorkbench` is the one orchestrator of those stages for one (data, category,
profile, seed): it loads the images once, fits each masker once, trains the EAR U-Net once, and
evaluates any FADeR variant on them, with every artifact cached under one key scheme
(:mod:`fader_kit.cache`).  ``fader-kit evaluate`` (:func:`evaluate_category`) and the benchmark
runner both go through it, so the same settings give the same row whichever command asked.
Plain EAR and FADeR are always measured on the same trained U-Net and the same masks; FADeR
fine-tunes a *copy* of the decoder, so the EAR row is untouched by it.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor
from tqdm.auto import tqdm

from . import cache as keys
from .cache import MaskSet, WorkCache, fused_key
from .config import FaderConfig, Profile, TrainConfig
from .data import CategorySplit, SyntheticConfig, load_category
from .diagnostics import Diagnostics, head_diagnostics, mask_diagnostics
from .fader import FaderModel, wrap_with_fader
from .fusion import fit_fusion, fuse_maps
from .interfaces import Masker, MaskerInfo
from .metrics import aupro, f1_max, image_auroc, pixel_auroc
from .stats import Comparison, ScoreDetail, SeedSummary, paired_bootstrap
from .training import seeded_init, train_fader, train_reconstructor
from .unet import EARUNet


class Metrics(BaseModel):
    image_auroc: float
    pixel_auroc: float
    pixel_aupro: float | None = None
    image_f1_max: float | None = None


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
def device_batches(
    images: Tensor, *others: Tensor, batch_size: int, device: torch.device | str, progress: bool = False,
    desc: str = "",
) -> Iterator[tuple[Tensor, ...]]:
    """``images`` (and tensors aligned with them) in consecutive batches on ``device``: the one loop
    behind masks, masker scores, anomaly maps and diagnostics (a tqdm bar when ``progress``)."""
    for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        yield tuple(t[i : i + batch_size].to(device) for t in (images, *others))


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
            raise ValueError(
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
    *, seed: int, device: torch.device | str, progress: bool = False,
) -> tuple[FaderModel, dict[str, Any]]:
    """Wrap a *copy* of ``unet`` with a fresh FADeR head and train it."""
    t0 = time.perf_counter()
    model = seeded_init(lambda: wrap_with_fader(copy.deepcopy(unet), None, fader_config), seed + 1)
    history = train_fader(model, train_images, masks, train_config, seed=seed, device=device, progress=progress)
    return model, {"seconds": time.perf_counter() - t0, "final_ranking_loss": history[-1]["ranking_loss"]}


@torch.no_grad()
def diagnose(
    model: FaderModel, images: Tensor, masks: Tensor, labels: Tensor, gt_masks: Tensor, *, batch_size: int,
    device: torch.device | str,
) -> Diagnostics:
    """Mask coverage of the defects, and -- for a model with a head -- where its gates close
    (see :mod:`fader_kit.diagnostics`)."""
    mask = mask_diagnostics(masks, gt_masks, labels)
    if model.head is None:
        return Diagnostics(mask=mask)
    model.to(device).eval()
    preds, grids = [], []
    for x, mb in device_batches(images, masks, batch_size=batch_size, device=device):
        p, g = model.head_outputs(x, mb)
        preds.append(p.cpu())
        grids.append(g.cpu())
    head = head_diagnostics(torch.cat(preds), torch.cat(grids), masks, gt_masks, labels, model.patch_size)
    return Diagnostics(mask=mask, head=head)


@torch.no_grad()
def anomaly_maps(
    model: FaderModel, images: Tensor, masks: Tensor, *, batch_size: int, device: torch.device | str,
    progress: bool = False, desc: str = "scoring",
) -> Tensor:
    """Smoothed MSGMS anomaly maps ``[N, 1, H, W]`` (CPU) with the given binary masks."""
    model.to(device).eval()
    return torch.cat([model.anomaly_map(x, mb).cpu() for x, mb in device_batches(
        images, masks, batch_size=batch_size, device=device, progress=progress, desc=desc)])


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
    return torch.cat([masker.score_map(x).float().cpu() for (x,) in device_batches(
        images, batch_size=batch_size, device=device, progress=progress, desc="masker scores")])


# -- the orchestrator -----------------------------------------------------------------------------
EarMasks = Literal["masker", "blobs"]
Log = Callable[[str], None]


class WorkbenchSettings(BaseModel):
    """What one :class:`CategoryWorkbench` works on.  ``seed`` drives every model (masker fit, U-Net,
    head); the test images do not depend on it (``data_seed`` picks the synthetic data), so results
    of different seeds are paired on the same test set."""

    model_config = {"frozen": True, "arbitrary_types_allowed": True}

    data: str
    category: str
    profile: Profile
    seed: int = 0
    device: str = "cpu"
    ear_masks: EarMasks = Field(
        "blobs", description="the EAR U-Net learns to inpaint random blobs only (default: one U-Net per category "
        "serves every masker, as the paper swaps maskers without changing the pre-trained U-Net) or the masker's "
        "masks united with blobs")
    synthetic: SyntheticConfig | None = None
    data_seed: int = 0
    progress: bool = False


class Evaluation(BaseModel):
    """One evaluated model (plain EAR or a FADeR variant) on one category and seed."""

    model_config = {"arbitrary_types_allowed": True}

    metrics: Metrics
    detail: ScoreDetail
    timings: dict[str, float]
    model: FaderModel
    diagnostics: Diagnostics | None = None
    fused: Metrics | None = Field(None, description="the fused score (fader_kit.fusion): this model's map + the "
                                  "masker's score map, each on its normal-image scale")
    fused_detail: ScoreDetail | None = None


class CategoryWorkbench:
    """Shared work of one (data, category, profile, seed): images, masks, the EAR U-Net.

    Everything is computed on first use and cached under ``cache`` (a :class:`WorkCache`), so a
    rerun -- or another command with the same settings -- reuses it.
    """

    def __init__(self, settings: WorkbenchSettings, cache: WorkCache, *, log: Log = print) -> None:
        self.settings = settings
        self.cache = cache
        self.log = log
        self.device = torch.device(settings.device)
        self.data_key = keys.data_key(settings.data, settings.synthetic)
        self._split: CategorySplit | None = None
        self._masks: dict[str, MaskSet] = {}
        self._unet: tuple[str, EARUNet] | None = None
        self.timings: dict[str, float] = {}
        self.counts = {"ear_trained": 0, "maskers_fitted": 0}

    # -- keys --------------------------------------------------------------------------------
    def masker_key(self, name: str, options: dict[str, Any]) -> str:
        s = self.settings
        return keys.masker_key(name, options, self.data_key, s.category, s.profile.image_size, s.seed)

    def ear_key(self, masker_key: str) -> str:
        s = self.settings
        return keys.ear_key(self.data_key, s.category, s.profile, s.seed,
                            masker_key if s.ear_masks == "masker" else None)

    def work_key(self, ear_key: str, masker_key: str, fader: FaderConfig | None) -> str:
        s = self.settings
        return keys.work_key(ear=ear_key, masker=masker_key, fader=fader, profile=s.profile, seed=s.seed)

    # -- stages ------------------------------------------------------------------------------
    def split(self) -> CategorySplit:
        if self._split is None:
            s = self.settings
            t = time.perf_counter()
            self._split = load_category(s.data, s.category, s.profile.image_size, seed=s.data_seed,
                                        progress=s.progress, synthetic=s.synthetic)
            self.timings["load_data"] = time.perf_counter() - t
        return self._split

    def masks(self, name: str, options: dict[str, Any], create: Callable[[], Masker]) -> tuple[MaskSet, bool]:
        """Binary masks (and the masker's test score maps) of masker ``name``: from memory, the cache,
        or a fresh fit (then the second value is True)."""
        mk = self.masker_key(name, options)
        if mk in self._masks:
            return self._masks[mk], False
        cached = self.cache.load_masks(name, mk)
        if cached is not None and cached.test_scores is not None and cached.train_scores is not None:
            self._masks[mk] = cached
            self._save_alone_detail(mk, cached)
            return cached, False
        s, split = self.settings, self.split()
        t = time.perf_counter()
        masker = create()
        masker.to(self.device)
        state = self.cache.masker_path(name, mk)
        if state.is_file():
            masker.load(state)
        else:
            masker.fit(split.train.to(self.device) if split.train.shape[0] <= 4096 else split.train,
                       seed=s.seed, progress=s.progress)
            masker.save(state)
            self.counts["maskers_fitted"] += 1
        bs = s.profile.eval_batch_size
        train = compute_masks(masker, split.train, batch_size=bs, device=self.device, progress=s.progress,
                              desc="masks (train)")
        test = compute_masks(masker, split.test, batch_size=bs, device=self.device, progress=s.progress,
                             desc="masks (test)")
        scores = masker_score_maps(masker, split.test, batch_size=bs, device=self.device, progress=s.progress)
        train_scores = masker_score_maps(masker, split.train, batch_size=bs, device=self.device, progress=s.progress)
        # score maps kept as the cache stores them (float16), so the masker-alone and fused numbers do not
        # depend on whether the masks came from memory or from the cache (a resumed run, another process)
        ms = MaskSet(train=train, test=test, info=masker.info, seconds=time.perf_counter() - t,
                     test_scores=scores.half(), train_scores=train_scores.half())
        self.cache.save_masks(name, mk, ms)
        self._save_alone_detail(mk, ms)
        self.log(f"    masker {name} (weights: {ms.info.weights}): fitted and masked in {ms.seconds:.1f}s; "
                 f"masked fraction train {train.float().mean():.3f}, test {test.float().mean():.3f}")
        self._masks[mk] = ms
        return ms, True

    def _save_detail(self, key: str, test_maps: Tensor) -> ScoreDetail:
        """The per-image score detail of ``test_maps`` (for paired intervals), cached under ``key``."""
        split = self.split()
        detail = ScoreDetail.from_maps(test_maps, split.labels, split.masks)
        self.cache.save_scores(key, detail)
        return detail

    def _save_alone_detail(self, masker_key: str, masks: MaskSet) -> None:
        """The masker alone's per-image score detail (paired intervals against it), once per masker key."""
        if masks.test_scores is not None and not self.cache.scores_path(keys.alone_key(masker_key)).is_file():
            self._save_detail(keys.alone_key(masker_key), masks.test_scores.float())

    def unet(self, ear_key: str, masks: MaskSet) -> tuple[EARUNet, dict[str, Any]]:
        """The EAR U-Net of ``ear_key``: in memory, from the cache file, or trained now."""
        if self._unet is not None and self._unet[0] == ear_key:
            return self._unet[1], {"reused": True, "path": str(self.cache.ear_path(ear_key))}
        s, split = self.settings, self.split()
        train_masks = masks.train if s.ear_masks == "masker" else None
        unet, info = train_ear(split.train, train_masks, s.profile, seed=s.seed, device=self.device,
                               progress=s.progress, cache=self.cache.ear_path(ear_key))
        if not info["reused"]:
            self.counts["ear_trained"] += 1
            how = "blobs only; shared by every masker" if train_masks is None else "masker's masks + blobs"
            self.log(f"    EAR U-Net ({s.category}, seed {s.seed}): trained in {info['seconds']:.1f}s ({how})")
        self._unet = (ear_key, unet)
        return unet, info

    def evaluate(
        self, masks: MaskSet, ear_key: str, fader: FaderConfig | None, work_key: str,
        train_config: TrainConfig | None = None,
    ) -> Evaluation:
        """Train (for a FADeR variant) and score one model on the test set; its score detail is
        cached under ``work_key`` for the paired bootstrap."""
        s, split = self.settings, self.split()
        timings: dict[str, float] = {}
        unet, ear_info = self.unet(ear_key, masks)
        timings["ear_train"] = 0.0 if ear_info["reused"] else float(ear_info.get("seconds", 0.0))
        if fader is None:
            model = FaderModel(unet, None, s.profile.fader_head, head=None)
            timings["fader_train"] = 0.0
        else:
            model, info = train_fader_on(unet, split.train, masks.train, fader, train_config or s.profile.fader,
                                         seed=s.seed, device=self.device, progress=s.progress)
            timings["fader_train"] = info["seconds"]
        t = time.perf_counter()
        maps = anomaly_maps(model, split.test, masks.test, batch_size=s.profile.eval_batch_size,
                            device=self.device, progress=s.progress)
        metrics = metrics_from_maps(maps, split.labels, split.masks)
        detail = self._save_detail(work_key, maps)
        diagnostics = diagnose(model, split.test, masks.test, split.labels, split.masks,
                               batch_size=s.profile.eval_batch_size, device=self.device)
        fused = fused_detail = None
        if masks.test_scores is not None and masks.train_scores is not None:
            normal = anomaly_maps(model, split.train, masks.train, batch_size=s.profile.eval_batch_size,
                                  device=self.device)
            fused_maps = fuse_maps(maps, masks.test_scores.float(),
                                   fit_fusion(normal, masks.train_scores.float()))
            fused = metrics_from_maps(fused_maps, split.labels, split.masks)
            fused_detail = self._save_detail(fused_key(work_key), fused_maps)
        timings["evaluate"] = time.perf_counter() - t
        return Evaluation(metrics=metrics, detail=detail, timings=timings, model=model, diagnostics=diagnostics,
                          fused=fused, fused_detail=fused_detail)

    def masker_alone(self, masks: MaskSet) -> Metrics | None:
        """The masker's own score map as the detector (image score = max): the baseline that tells
        whether EAR / FADeR add anything over the masker they are fed with."""
        if masks.test_scores is None:
            return None
        split = self.split()
        return metrics_from_maps(masks.test_scores.float(), split.labels, split.masks, extra=False)


# -- the main job ---------------------------------------------------------------------------------
class SeedResult(BaseModel):
    seed: int
    ear: Metrics
    fader: Metrics
    masker_alone: Metrics | None = None
    ear_fused: Metrics | None = Field(None, description="EAR's map fused with the masker's score map")
    fader_fused: Metrics | None = Field(None, description="FADeR's map fused with the masker's score map")
    diagnostics: Diagnostics | None = Field(None, description="FADeR's head and the masks on the test set")
    timings: dict[str, float] = Field(default_factory=dict)


class EvaluationResult(BaseModel):
    """What ``fader-kit evaluate`` writes to ``metrics.json``: one row per seed, the mean over seeds
    (``ear`` / ``fader`` / ``masker_alone``), their spread, and the paired comparison."""

    data: str
    category: str
    masker: MaskerInfo
    profile: str
    seeds: list[int]
    device: str
    ear_masks: EarMasks
    fader_variant: str | None = Field(None, description="the named head variant (fader_kit.fader.HEAD_VARIANTS)")
    fader_config: dict[str, Any] = Field(default_factory=dict)
    ear: Metrics
    fader: Metrics
    masker_alone: Metrics | None = None
    ear_fused: Metrics | None = None
    fader_fused: Metrics | None = None
    spread: dict[str, dict[str, SeedSummary]] = Field(default_factory=dict)
    comparison: dict[str, Comparison] = Field(default_factory=dict)
    fused_comparison: dict[str, dict[str, Comparison]] = Field(
        default_factory=dict, description="'ear_fused' / 'fader_fused' - EAR, paired like `comparison`")
    per_seed: list[SeedResult] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)

    def delta(self) -> dict[str, float]:
        return {k: getattr(self.fader, k) - getattr(self.ear, k) for k in ("image_auroc", "pixel_auroc")}


def mean_metrics(rows: list[Metrics]) -> Metrics:
    def avg(key: str) -> float | None:
        vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
        return float(sum(vals) / len(vals)) if vals else None

    return Metrics(image_auroc=avg("image_auroc"), pixel_auroc=avg("pixel_auroc"), pixel_aupro=avg("pixel_aupro"),
                   image_f1_max=avg("image_f1_max"))


def evaluate_category(
    data: str,
    category: str,
    masker: str,
    profile: Profile,
    *,
    out: Path,
    create_masker: Callable[[], Masker],
    masker_options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    seeds: tuple[int, ...] = (0,),
    ear_masks: EarMasks = "blobs",
    fader_config: FaderConfig | None = None,
    fader_variant: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> EvaluationResult:
    """Per seed: fit the masker, train (or reuse) the EAR U-Net, train FADeR, measure both (and each
    fused with the masker's score map, :mod:`fader_kit.fusion`); then the mean, spread and paired
    bootstrap interval of FADeR - EAR (and of each fused score - EAR) over the seeds.

    Written under ``out``: ``cache/`` (the same layout and keys as ``fader-kit bench``, so either
    command reuses the other's work), ``fader.pt`` (the FADeR model of the first seed;
    ``fader-seed<N>.pt`` for each further seed), and finally ``metrics.json``
    -- written last and atomically, so its presence means the run completed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
    cache = WorkCache(out)
    options = dict(masker_options or {})
    head = fader_config or profile.fader_head
    rows: list[SeedResult] = []
    details: list[tuple[ScoreDetail, ScoreDetail]] = []
    fused_details: list[tuple[ScoreDetail | None, ScoreDetail | None]] = []
    info: MaskerInfo | None = None
    t_all = time.perf_counter()
    for seed in seeds:
        bench = CategoryWorkbench(WorkbenchSettings(data=str(data), category=category, profile=profile, seed=seed,
                                                    device=str(device), ear_masks=ear_masks, progress=progress),
                                  cache, log=log)
        split = bench.split()
        if seed == seeds[0]:
            log(f"data: {data} / {category}: {split.train.shape[0]} train, {split.test.shape[0]} test images "
                f"({int(split.labels.sum())} defective) at {profile.image_size}px")
        masks, _ = bench.masks(masker, options, create_masker)
        info = masks.info
        mk = bench.masker_key(masker, options)
        ek = bench.ear_key(mk)
        ear = bench.evaluate(masks, ek, None, bench.work_key(ek, mk, None))
        log(f"seed {seed}: EAR U-Net " + ("reused" if ear.timings["ear_train"] == 0 else
                                           f"trained in {ear.timings['ear_train']:.1f}s"))
        fad = bench.evaluate(masks, ek, head, bench.work_key(ek, mk, head))
        fad.model.save(out / ("fader.pt" if seed == seeds[0] else f"fader-seed{seed}.pt"))
        log(f"seed {seed}: FADeR head trained in {fad.timings['fader_train']:.1f}s; image AUROC EAR "
            f"{ear.metrics.image_auroc:.3f} -> FADeR {fad.metrics.image_auroc:.3f}")
        timings = {"load_data": bench.timings.get("load_data", 0.0), "masker": masks.seconds,
                   "ear_train": ear.timings["ear_train"], "fader_train": fad.timings["fader_train"],
                   "evaluate": ear.timings["evaluate"] + fad.timings["evaluate"]}
        rows.append(SeedResult(seed=seed, ear=ear.metrics, fader=fad.metrics, masker_alone=bench.masker_alone(masks),
                               ear_fused=ear.fused, fader_fused=fad.fused, diagnostics=fad.diagnostics,
                               timings=timings))
        details.append((ear.detail, fad.detail))
        fused_details.append((ear.fused_detail, fad.fused_detail))
    assert info is not None
    spread = {}
    for name in ("ear", "fader", "masker_alone", "ear_fused", "fader_fused"):
        got = [getattr(r, name) for r in rows if getattr(r, name) is not None]
        if got:
            spread[name] = {k: SeedSummary.of([getattr(m, k) for m in got]) for k in ("image_auroc", "pixel_auroc")}
    comparison = paired_bootstrap([d[0] for d in details], [d[1] for d in details])
    fused_comparison = {}
    for name, idx in (("ear_fused", 0), ("fader_fused", 1)):
        if all(f[idx] is not None for f in fused_details):
            fused_comparison[name] = paired_bootstrap([d[0] for d in details], [f[idx] for f in fused_details])
    alone = [r.masker_alone for r in rows if r.masker_alone is not None]

    def mean_of(name: str) -> Metrics | None:
        got = [getattr(r, name) for r in rows if getattr(r, name) is not None]
        return mean_metrics(got) if len(got) == len(rows) else None

    result = EvaluationResult(
        data=str(data), category=category, masker=info, profile=profile.name, seeds=list(seeds), device=str(device),
        ear_masks=ear_masks, fader_variant=fader_variant, fader_config=head.model_dump(mode="json"),
        ear=mean_metrics([r.ear for r in rows]), fader=mean_metrics([r.fader for r in rows]),
        masker_alone=mean_metrics(alone) if alone else None, ear_fused=mean_of("ear_fused"),
        fader_fused=mean_of("fader_fused"), spread=spread, comparison=comparison, fused_comparison=fused_comparison,
        per_seed=rows,
        timings={"total": time.perf_counter() - t_all}, environment=environment(),
    )
    write_json_atomic(out / "metrics.json", result.model_dump(mode="json"))
    return result


__all__ = [
    "CategoryWorkbench", "Diagnostics", "Evaluation", "EvaluationResult", "Metrics", "SeedResult", "WorkbenchSettings",
    "anomaly_maps", "compute_masks", "diagnose", "environment", "evaluate_category", "masker_score_maps", "mean_metrics",
    "metrics_from_maps", "train_ear", "train_fader_on", "write_json_atomic",
]
