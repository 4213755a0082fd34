"""The shared work of one (data, category, profile, seed): images, masks, the EAR U-Net.

:class:`CategoryWorkbench` computes every artifact on first use and caches it under one key
scheme (:mod:`fader_kit.engine.keys`), so a rerun -- or another command with the same settings --
reuses it.  Callers ask by *settings* (a mask source, a head configuration); the workbench derives
the keys itself and never takes one back.  Plain EAR and FADeR are always measured on the same
trained U-Net and the same masks; FADeR fine-tunes a *copy* of the decoder, so the EAR row is
untouched by it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, Field

from fader_kit.model.config import FaderConfig, Profile, TrainConfig
from fader_kit.data import CategorySplit, DataError, SyntheticConfig, load_category
from fader_kit.model.diagnostics import Diagnostics
from fader_kit.errors import ConfigError
from fader_kit.model.fader import FaderModel
from fader_kit.model.fusion import FusionScales, fit_fusion, fuse_maps
from fader_kit.model.fusion_rules import Fused, fusion_rule
from fader_kit.maskers.interfaces import Masker, MaskerInfo
from fader_kit.model.pipeline import (
    Metrics, anomaly_maps, compute_masks, diagnose, ear_stage, fader_stage, fit_masker, masker_score_maps,
    metrics_from_maps, pseudo_anomaly_maps,
)
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.engine.stats import ScoreDetail
from fader_kit.model.unet import EARUNet
from fader_kit.engine import keys
from fader_kit.engine.artifacts import MaskSet, WorkCache
from fader_kit.engine.sources import MaskSource, OracleSource, degrade_masks

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


@dataclass(frozen=True)
class UnitKeys:
    """The keys of one evaluated model: its masks, its EAR U-Net, and its row."""

    masks: str
    ear: str
    work: str


class Evaluation(BaseModel):
    """One evaluated model (plain EAR or a FADeR variant) on one category and seed, with what this
    call computed (``timings``: seconds per stage it ran; ``trained``: what it fitted or trained)."""

    model_config = {"arbitrary_types_allowed": True}

    metrics: Metrics
    details: dict[str, ScoreDetail] = Field(description="per-image score details by key (row, fused)")
    timings: dict[str, float]
    trained: dict[str, int]
    model: FaderModel
    masks: MaskSet
    diagnostics: Diagnostics | None = None
    fused: Metrics | None = Field(None, description="the fused score (fader_kit.model.fusion): this model's map + the "
                                  "masker's score map, each on its normal-image scale")
    fusion: FusionScales | None = Field(None, description="how the fused score combined the two maps (rule, scales, "
                                        "weight)")


class CategoryWorkbench:
    """Images, masks and the EAR U-Net of one (data, category, profile, seed), computed once."""

    def __init__(self, settings: WorkbenchSettings, cache: WorkCache, *, registry: MaskerRegistry | None = None,
                 log: Log = print) -> None:
        self.settings = settings
        self.cache = cache
        self.registry = registry
        self.log = log
        self.device = torch.device(settings.device)
        self.data_key = keys.data_key(settings.data, settings.synthetic, settings.data_seed)
        self._split: CategorySplit | None = None
        self._masks: dict[str, MaskSet] = {}
        self._maskers: dict[str, Masker] = {}  # fitted maskers by masks key, for fitted_masker()
        self._alone: dict[str, tuple[Metrics, ScoreDetail] | None] = {}  # the masker alone, once per masks key
        self._unet: tuple[str, EARUNet] | None = None
        self._pending: dict[str, float] = {}  # stage seconds not yet reported by an evaluation
        self._trained = {"maskers_fitted": 0, "ear_trained": 0}

    # -- keys --------------------------------------------------------------------------------
    def masks_key(self, source: MaskSource) -> str:
        s = self.settings
        opts = source.options if source.is_masker else {"oracle": source.options}
        return keys.masker_key(source.name, opts, self.data_key, s.category, s.profile.image_size, s.seed)

    def keys(self, source: MaskSource, head: FaderConfig | None, *, train: TrainConfig | None = None,
             fused: Fused = False) -> UnitKeys:
        s = self.settings
        mk = self.masks_key(source)
        ek = keys.ear_key(self.data_key, s.category, s.profile, s.seed, mk if s.ear_masks == "masker" else None)
        wk = keys.work_key(ear=ek, masker=mk, fader=head, profile=s.profile, seed=s.seed, train=train, fused=fused)
        return UnitKeys(mk, ek, wk)

    # -- stages ------------------------------------------------------------------------------
    def split(self) -> CategorySplit:
        if self._split is None:
            s = self.settings
            t = time.perf_counter()
            split = load_category(s.data, s.category, s.profile.image_size, seed=s.data_seed, progress=s.progress,
                                  synthetic=s.synthetic)
            n_bad = int(split.labels.sum())
            if n_bad == 0 or n_bad == split.labels.numel():
                what = "defective" if n_bad == 0 else "normal"
                raise DataError(f"data {s.data} / {s.category}: the test set has no {what} images, so no AUROC can be "
                                f"measured (it needs test/good and at least one defect folder)")
            self._split = split
            self._pending["load_data"] = time.perf_counter() - t
        return self._split

    def masks(self, source: MaskSource) -> tuple[MaskSet, bool]:
        """Binary masks (and the masker's score maps) of ``source``: from memory, the cache, or
        computed now (then the second value is True)."""
        mk = self.masks_key(source)
        if mk in self._masks:
            return self._masks[mk], False
        if isinstance(source, OracleSource):
            ms = self._oracle_masks(source)
            self._masks[mk] = ms
            return ms, True
        cached = self.cache.load_masks(source.name, mk)
        if cached is not None and cached.test_scores is not None and cached.train_scores is not None:
            self._masks[mk] = cached
            return cached, False
        s, split = self.settings, self.split()
        t = time.perf_counter()
        masker, fit = self._fitted(source, mk)
        self._maskers[mk] = masker
        bs = s.profile.eval_batch_size
        common = dict(batch_size=bs, device=self.device, progress=s.progress)
        train = compute_masks(masker, split.train, desc="masks (train)", **common)
        test = compute_masks(masker, split.test, desc="masks (test)", **common)
        scores = masker_score_maps(masker, split.test, **common)
        train_scores = masker_score_maps(masker, split.train, **common)
        # score maps kept as the cache stores them (float16), so the masker-alone and fused numbers do not
        # depend on whether the masks came from memory or from the cache (a resumed run, another process)
        ms = MaskSet(train=train, test=test, info=masker.info, seconds=time.perf_counter() - t,
                     test_scores=scores.half(), train_scores=train_scores.half(), timings=fit)
        self.cache.save_masks(source.name, mk, ms)
        self.log(f"    masker {source.name} (weights: {ms.info.weights}): fitted and masked in {ms.seconds:.1f}s; "
                 f"masked fraction train {train.float().mean():.3f}, test {test.float().mean():.3f}")
        self._masks[mk] = ms
        self._pending["masker"] = self._pending.get("masker", 0.0) + ms.seconds
        return ms, True

    def _fitted(self, source: MaskSource, key: str) -> tuple[Masker, dict[str, float]]:
        """The masker of ``source``, fitted on the normal training images or loaded from the cache
        (the second value: the fit's wall and CPU seconds when it was fitted now)."""
        s, split = self.settings, self.split()
        masker = self._create_masker(source)
        masker.to(self.device)
        state = self.cache.masker_path(source.name, key)
        if state.is_file():
            masker.load(state)
            return masker, {}
        t, c = time.perf_counter(), time.process_time()
        fit_masker(masker, split.train, seed=s.seed, device=self.device, progress=s.progress)
        fit = {"fit_s": time.perf_counter() - t, "fit_cpu_s": time.process_time() - c}
        masker.save(state)
        self._trained["maskers_fitted"] += 1
        return masker, fit

    def fitted_masker(self, source: MaskSource) -> Masker:
        """The fitted masker itself (for measurements of the masker alone); fits it on first use."""
        if isinstance(source, OracleSource):
            raise ConfigError(f"{source.name} is an oracle mask source, not a masker")
        self.masks(source)
        mk = self.masks_key(source)
        if mk not in self._maskers:  # the masks came from the cache: load the fitted state once
            self._maskers[mk] = self._fitted(source, mk)[0]
        return self._maskers[mk]

    def _oracle_masks(self, source: OracleSource) -> MaskSet:
        split = self.split()
        test = degrade_masks(split.masks, source.coverage, seed=self.settings.seed)
        train = torch.zeros(split.train.shape[0], 1, *split.train.shape[-2:], dtype=torch.bool)
        info = MaskerInfo(name=source.name, weights="ground-truth", details={"coverage": source.coverage})
        return MaskSet(train=train, test=test, info=info, seconds=0.0)

    def _create_masker(self, source: MaskSource) -> Masker:
        """The masker with its options; ``category`` reaches the factories that take it (WinCLIP's
        prompts name the object: ``metal_nut`` -> "metal nut")."""
        if self.registry is None:
            from fader_kit.maskers.registry import default_registry

            self.registry = default_registry()
        options = dict(source.options)
        options.setdefault("device", str(self.device))
        return self.registry.create(source.name, category=self.settings.category, **options)

    def unet(self, source: MaskSource) -> tuple[EARUNet, dict[str, Any]]:
        """The EAR U-Net for ``source``'s keys: in memory, from the cache file, or trained now."""
        ek = self.keys(source, None).ear
        path = self.cache.ear_path(ek)
        if self._unet is not None and self._unet[0] == ek:
            return self._unet[1], {"reused": True, "path": str(path)}
        s, split = self.settings, self.split()
        unet, info = ear_stage(split.train, lambda: self.masks(source)[0].train, s.profile, ear_masks=s.ear_masks,
                               seed=s.seed, device=self.device, progress=s.progress, cache=path)
        if not info["reused"]:
            self._trained["ear_trained"] += 1
            self._pending["ear_train"] = self._pending.get("ear_train", 0.0) + float(info["seconds"])
            how = "blobs only; shared by every masker" if s.ear_masks == "blobs" else "masker's masks + blobs"
            self.log(f"    EAR U-Net ({s.category}, seed {s.seed}): trained in {info['seconds']:.1f}s ({how})")
        self._unet = (ek, unet)
        return unet, info

    def take_work_done(self) -> tuple[dict[str, float], dict[str, int]]:
        """Seconds per shared stage and counts of what was fitted or trained since the last call:
        reported once, with the first evaluation that needed them."""
        timings, trained = self._pending, self._trained
        self._pending, self._trained = {}, {"maskers_fitted": 0, "ear_trained": 0}
        return timings, trained

    def evaluate(self, source: MaskSource, head: FaderConfig | None, *, train: TrainConfig | None = None,
                 fused: Fused = False, diagnostics: bool = True) -> Evaluation:
        """Train (for a FADeR head) and score one model on the test set.  ``fused`` (True or a rule of
        :func:`fader_kit.model.fusion.fit_fusion`) also scores its map fused with the masker's score map: one
        more pass over the training images, and for ``pseudo`` one over them with pseudo-anomalies."""
        s, split = self.settings, self.split()
        unit_keys = self.keys(source, head, train=train, fused=fused)
        masks, _ = self.masks(source)
        unet, _ = self.unet(source)
        timings: dict[str, float] = {}
        if head is None:
            model = FaderModel(unet, None, s.profile.fader_head, head=None)
            timings["fader_train"] = 0.0
        else:
            fitted = None if isinstance(source, OracleSource) else (lambda: self.fitted_masker(source))
            model, info = fader_stage(unet, split.train, masks.train, head, train or s.profile.fader, seed=s.seed,
                                      device=self.device, progress=s.progress, scores=masks.train_scores,
                                      masker=fitted, masker_name=source.name)
            timings["fader_train"] = info["seconds"]
        t = time.perf_counter()
        bs = s.profile.eval_batch_size
        maps = anomaly_maps(model, split.test, masks.test, batch_size=bs, device=self.device, progress=s.progress,
                            scores=masks.test_scores)
        metrics = metrics_from_maps(maps, split.labels, split.masks)
        details = {unit_keys.work: ScoreDetail.from_maps(maps, split.labels, split.masks)}
        diag = diagnose(model, split.test, masks.test, split.labels, split.masks, batch_size=bs,
                        device=self.device, scores=masks.test_scores) if diagnostics else None
        fused_metrics = scales = None
        rule = fusion_rule(fused)
        if rule is not None and masks.test_scores is not None and masks.train_scores is not None:
            normal = anomaly_maps(model, split.train, masks.train, batch_size=bs, device=self.device,
                                  scores=masks.train_scores)
            pseudo = (pseudo_anomaly_maps(model, self.fitted_masker(source), split.train, seed=s.seed, batch_size=bs,
                                          device=self.device) if rule == "pseudo" else None)
            scales = fit_fusion(normal, masks.train_scores.float(), rule=rule, pseudo=pseudo)
            fused_maps = fuse_maps(maps, masks.test_scores.float(), scales)
            fused_metrics = metrics_from_maps(fused_maps, split.labels, split.masks)
            details[keys.fused_key(unit_keys.work)] = ScoreDetail.from_maps(fused_maps, split.labels, split.masks)
        timings["evaluate"] = time.perf_counter() - t
        shared, trained = self.take_work_done()
        stages = {"load_data": 0.0, "masker": 0.0, "ear_train": 0.0, **shared, **timings}
        return Evaluation(metrics=metrics, details=details, timings=stages, trained=trained,
                          model=model, masks=masks, diagnostics=diag, fused=fused_metrics, fusion=scales)

    def masker_alone(self, source: MaskSource) -> tuple[Metrics, ScoreDetail] | None:
        """The masker's own score map as the detector (image score = max): the baseline that tells
        whether EAR / FADeR add anything over the masker they are fed with.  Computed once per
        masks key: every head of the same masks shares it."""
        key = self.masks_key(source)
        if key not in self._alone:
            masks, _ = self.masks(source)
            split = self.split()
            maps = None if masks.test_scores is None else masks.test_scores.float()
            self._alone[key] = None if maps is None else (
                metrics_from_maps(maps, split.labels, split.masks, extra=False),
                ScoreDetail.from_maps(maps, split.labels, split.masks))
        return self._alone[key]


__all__ = ["CategoryWorkbench", "EarMasks", "Evaluation", "UnitKeys", "WorkbenchSettings"]
