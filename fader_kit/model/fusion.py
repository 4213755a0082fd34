"""Fused score: the reconstruction's anomaly map and the masker's own score map, combined on one scale.

Beyond the paper.  EAR / FADeR see the masker only through its *binary* mask; the masker's
continuous score map is thrown away, although on real photographs it is often the better
detector (MSFlow on MPDD `metal_plate`: image AUROC 0.99 alone).  The fused map combines the two
maps after each is put on the scale of its own values on *normal* images:

    r = (recon - median_r) / (q_r - median_r),   m = (masker - median_m) / (q_m - median_m)

with median and q (the ``quantile``, default 0.99) over every pixel of the normal training
images' maps.  One unit of either term is "as far above normal as the top 1 % of normal pixels",
so neither map dominates by its units (MSGMS is in [0, 1], a flow's negative log-likelihood is
not).  The two are then combined by a rule (:func:`fit_fusion`): ``r + m`` (``sum``), ``max(r, m)``
(``max``) or ``w r + (1 - w) m`` with ``w`` chosen on the training images (``select``; ``pseudo``, the
default: the ``w`` that best separates pseudo-anomalies pasted into them).  The image score is the
map's max, as for every other map here.

The normal statistics come from the *training* images: the only normal images a user has.  A
trained masker (MSFlow, DSR, AMI-Net) and the EAR U-Net have both seen them, so their maps there
are lower and tighter than on unseen normal images; that makes the scales smaller and the fused
map larger on every test image alike, which the AUROC (a ranking) does not see, but it can tilt
the balance towards the map that overfits more.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fader_kit.model.fusion_rules import DEFAULT_FUSION_RULE, FUSION_RULES, Fused, FusionRule, fusion_rule, unknown_rule
from fader_kit.util.quantiles import quantiles


class MapScale(BaseModel):
    """Where a map's normal values lie: ``(map - centre) / scale`` puts the median of normal pixels at 0
    and their ``quantile`` at 1."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    centre: float
    scale: float = Field(gt=0)
    quantile: float = Field(0.99, gt=0.5, lt=1)

    @classmethod
    def fit(cls, normal_maps: Tensor, quantile: float = 0.99) -> "MapScale":
        """From maps of normal images (any shape); a constant map gets a tiny positive scale."""
        centre, top = quantiles(normal_maps, [0.5, quantile], what="MapScale.fit")
        scale = float(top - centre)
        if scale <= 0:
            scale = 1e-6 * max(float(normal_maps.detach().abs().max()), 1e-12)
        return cls(centre=float(centre), scale=scale, quantile=quantile)

    def apply(self, maps: Tensor) -> Tensor:
        return (maps.float() - self.centre) / self.scale


#: the weights of the reconstruction's map that ``rule="select"`` tries (the masker's gets 1 - w)
SELECT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


class FusionScales(BaseModel):
    """The two scales of one fused score (stored beside a result so it can be reproduced), the rule
    that combines the normalised maps and, for ``weighted`` sums, the reconstruction's weight."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    reconstruction: MapScale
    masker: MapScale
    rule: Literal["sum", "max", "weighted"] = "sum"
    weight: float = Field(0.5, ge=0, le=1, description="rule 'weighted': w * reconstruction + (1 - w) * masker")


def _combine(r: Tensor, m: Tensor, rule: str, weight: float) -> Tensor:
    if rule == "sum":
        return r + m
    if rule == "max":
        return torch.maximum(r, m)
    if rule == "weighted":
        return weight * r + (1.0 - weight) * m
    raise ValueError(f"unknown fusion rule {rule!r}; use 'sum', 'max' or 'weighted'")


def normal_tail(normal_fused_maps: Tensor, quantile: float = 0.99, image_quantile: float = 0.9) -> float:
    """How far the normal images' scores (max of each map) reach, in units of the map's own normal pixel
    spread: the ``image_quantile`` of ``(max - median) / (q - median)`` over the normal images, with the
    pixel median and ``quantile`` q of the same maps.  Lower = the normal images stay closer to their
    typical pixel, so a defect of a given strength stands out more."""
    scale = MapScale.fit(normal_fused_maps, quantile)
    tops = scale.apply(normal_fused_maps).flatten(1).amax(dim=1).cpu().numpy()
    return float(np.quantile(tops, image_quantile))


def fit_fusion(normal_reconstruction_maps: Tensor, normal_masker_maps: Tensor, quantile: float = 0.99,
               rule: FusionRule = "sum", pseudo: tuple[Tensor, Tensor] | None = None) -> FusionScales:
    """Both scales from the maps of the same normal images, and how to combine them:

    - ``sum`` (default): the sum of the two normalised maps;
    - ``max``: their pixel-wise maximum, so a map that is far above its normal range is not diluted by the
      other map's normal noise;
    - ``select``: the weighted sum ``w * r + (1 - w) * m`` with the ``w`` of :data:`SELECT_WEIGHTS` (0 = the
      masker alone, 1 = the reconstruction alone) whose normal training images reach least far above their
      own normal pixels (:func:`normal_tail`);
    - ``pseudo``: the weighted sum whose ``w`` best separates pseudo-anomalous images from the normal ones
      (image AUROC of the maps' maxima): ``pseudo`` = (reconstruction maps, masker maps) of the normal
      training images with a pseudo-anomaly pasted in, e.g. by
      :func:`fader_kit.model.training.paste_pseudo_anomalies`; ties go to the more even mix.

    Every rule is chosen from the training images (and pseudo-anomalies made of them), never from test
    labels.
    """
    scales = FusionScales(reconstruction=MapScale.fit(normal_reconstruction_maps, quantile),
                          masker=MapScale.fit(normal_masker_maps, quantile))
    if rule in ("sum", "max"):
        return scales.model_copy(update={"rule": rule})
    r, m = scales.reconstruction.apply(normal_reconstruction_maps), scales.masker.apply(normal_masker_maps)
    if rule == "select":
        tails = {w: normal_tail(_combine(r, m, "weighted", w), quantile) for w in SELECT_WEIGHTS}
        best = min(tails, key=lambda w: (tails[w], abs(w - 0.5)))  # ties: the more even mix
    elif rule == "pseudo":
        if pseudo is None:
            raise ValueError("rule='pseudo' needs pseudo=(reconstruction maps, masker maps) of pseudo-anomalous images")
        from fader_kit.model.metrics import auroc

        pr, pm = scales.reconstruction.apply(pseudo[0]), scales.masker.apply(pseudo[1])
        labels = np.r_[np.zeros(r.shape[0]), np.ones(pr.shape[0])]

        def separation(w: float) -> float:
            tops = torch.cat([_combine(r, m, "weighted", w).flatten(1).amax(1),
                              _combine(pr, pm, "weighted", w).flatten(1).amax(1)])
            return auroc(tops, labels)

        found = {w: separation(w) for w in SELECT_WEIGHTS}
        best = max(found, key=lambda w: (found[w], -abs(w - 0.5)))
    else:
        raise unknown_rule(rule)
    return scales.model_copy(update={"rule": "weighted", "weight": best})


def fuse_maps(reconstruction_maps: Tensor, masker_maps: Tensor, scales: FusionScales) -> Tensor:
    """The fused map ``[N, 1, H, W]``: the two normalised maps combined by ``scales.rule`` (same shape
    required)."""
    if reconstruction_maps.shape != masker_maps.shape:
        raise ValueError(f"fuse_maps: reconstruction maps {list(reconstruction_maps.shape)} and masker maps "
                         f"{list(masker_maps.shape)} must have the same shape")
    return _combine(scales.reconstruction.apply(reconstruction_maps), scales.masker.apply(masker_maps),
                    scales.rule, scales.weight)


__all__ = ["DEFAULT_FUSION_RULE", "FUSION_RULES", "Fused", "FusionRule", "FusionScales", "MapScale", "SELECT_WEIGHTS",
           "fit_fusion", "fuse_maps", "fusion_rule", "normal_tail"]
