"""Fused score: the reconstruction's anomaly map and the masker's own score map, added on one scale.

Beyond the paper.  EAR / FADeR see the masker only through its *binary* mask; the masker's
continuous score map is thrown away, although on real photographs it is often the better
detector (MSFlow on MPDD `metal_plate`: image AUROC 0.99 alone).  The fused map adds the two
maps after each is put on the scale of its own values on *normal* images:

    fused = (recon - median_r) / (q_r - median_r) + (masker - median_m) / (q_m - median_m)

with median and q (the ``quantile``, default 0.99) over every pixel of the normal training
images' maps.  One unit of either term is "as far above normal as the top 1 % of normal pixels",
so neither map dominates by its units (MSGMS is in [0, 1], a flow's negative log-likelihood is
not).  The image score is the map's max, as for every other map here.

The normal statistics come from the *training* images: the only normal images a user has.  A
trained masker (MSFlow, DSR, AMI-Net) and the EAR U-Net have both seen them, so their maps there
are lower and tighter than on unseen normal images; that makes the scales smaller and the fused
map larger on every test image alike, which the AUROC (a ranking) does not see, but it can tilt
the balance towards the map that overfits more.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from .util.quantiles import quantiles


class MapScale(BaseModel):
    """Where a map's normal values lie: ``(map - centre) / scale`` puts the median of normal pixels at 0
    and their ``quantile`` at 1."""

    model_config = ConfigDict(frozen=True)

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


class FusionScales(BaseModel):
    """The two scales of one fused score (stored beside a result so it can be reproduced)."""

    model_config = ConfigDict(frozen=True)

    reconstruction: MapScale
    masker: MapScale


def fit_fusion(normal_reconstruction_maps: Tensor, normal_masker_maps: Tensor, quantile: float = 0.99) -> FusionScales:
    """Both scales from the maps of the same normal images."""
    return FusionScales(reconstruction=MapScale.fit(normal_reconstruction_maps, quantile),
                        masker=MapScale.fit(normal_masker_maps, quantile))


def fuse_maps(reconstruction_maps: Tensor, masker_maps: Tensor, scales: FusionScales) -> Tensor:
    """The fused map ``[N, 1, H, W]``: the sum of the two normalised maps (same shape required)."""
    if reconstruction_maps.shape != masker_maps.shape:
        raise ValueError(f"fuse_maps: reconstruction maps {list(reconstruction_maps.shape)} and masker maps "
                         f"{list(masker_maps.shape)} must have the same shape")
    return scales.reconstruction.apply(reconstruction_maps) + scales.masker.apply(masker_maps)


__all__ = ["FusionScales", "MapScale", "fit_fusion", "fuse_maps"]
