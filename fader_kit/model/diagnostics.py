"""Head and mask diagnostics: does the FADeR head find the defects the binary mask missed?

FADeR's thesis (paper Sec. 3) is that the head closes the skip connections on defect patches the
masker left unmasked.  These pure functions measure exactly that on a labelled test set:

- the masker's side: which fraction of the defect pixels M_B covers, and on how many defective
  images it misses the defect entirely (then only the head can help);
- the head's side: the mean gate on unmasked defect pixels, on normal pixels of defective images
  and on normal images (1 = skip open, 0 = closed), and the AUROC of the predicted error l_hat
  for unmasked-defect patches against normal patches.

A head that "found the missed defects" closes its gates on unmasked defects clearly more than on
normal pixels, and ranks those patches above normal ones (:func:`found_missed_defects`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor

from fader_kit.model.metrics import auroc

#: a patch counts as an unmasked-defect patch when at least this fraction of its pixels is
#: defective and not masked; a normal patch has no defect pixel at all
DEFECT_PATCH_FRACTION = 0.25
#: found_missed_defects: the AUROC and the gate gap (normal - unmasked defect) it asks for
FOUND_AUROC = 0.7
FOUND_GATE_GAP = 0.1


class MaskDiagnostics(BaseModel):
    """How much of the defects the binary mask M_B covers on the test set."""

    defect_pixels_masked: float | None = Field(description="fraction of ground-truth defect pixels inside M_B")
    defective_images_unmasked: float | None = Field(
        description="fraction of defective images whose defect has no pixel inside M_B")
    normal_pixels_masked: float = Field(description="fraction of normal pixels (all test images) inside M_B")


class HeadDiagnostics(BaseModel):
    """Where the head's gates close on the test set (gate 1 = skip open, 0 = closed)."""

    gate_unmasked_defect: float | None = Field(description="mean gate on defect pixels outside M_B")
    gate_normal_defective: float | None = Field(description="mean gate on normal pixels of defective images")
    gate_normal_images: float | None = Field(description="mean gate on every pixel of normal images")
    closed_normal_images: float | None = Field(
        description="fraction of normal images with at least one patch gate below 0.5")
    auroc_unmasked_defect: float | None = Field(
        description="AUROC of l_hat: unmasked-defect patches against normal patches (0.5 = chance)")
    unmasked_defect_patches: int = 0
    found_missed_defects: bool | None = None


class Diagnostics(BaseModel):
    mask: MaskDiagnostics
    head: HeadDiagnostics | None = None


def _mean(values: Tensor, where: Tensor) -> float | None:
    n = int(where.sum())
    return float(values[where].float().mean()) if n else None


def mask_diagnostics(binary_masks: Tensor, gt_masks: Tensor, labels: Tensor) -> MaskDiagnostics:
    """Coverage of the ground truth ``gt_masks`` ``[N, 1, H, W]`` by ``binary_masks`` (same shape)."""
    if binary_masks.shape != gt_masks.shape:
        raise ValueError(f"binary masks {list(binary_masks.shape)} and ground truth {list(gt_masks.shape)} differ")
    mb, gt = binary_masks.bool().cpu(), gt_masks.bool().cpu()
    defective = labels.bool().cpu() & gt.flatten(1).any(dim=1)
    covered = (mb & gt).flatten(1).any(dim=1)
    return MaskDiagnostics(
        defect_pixels_masked=_mean(mb, gt),
        defective_images_unmasked=float((~covered[defective]).float().mean()) if defective.any() else None,
        normal_pixels_masked=float(mb[~gt].float().mean()),
    )


def patch_fraction(mask: Tensor, m: int) -> Tensor:
    """Fraction of each m x m patch's pixels that are set, ``[N, (H/m)*(W/m)]`` (row-major like l_hat)."""
    return F.avg_pool2d(mask.float(), m).flatten(1)


def head_diagnostics(
    predicted_error: Tensor, gate_grid: Tensor, binary_masks: Tensor, gt_masks: Tensor, labels: Tensor, m: int,
    defect_fraction: float = DEFECT_PATCH_FRACTION,
) -> HeadDiagnostics:
    """Gates and predicted errors of a head on labelled test images.

    ``predicted_error`` ``[N, P]`` and ``gate_grid`` ``[N, 1, H/m, W/m]`` come from
    :meth:`fader_kit.model.fader.FaderModel.head_outputs`; masks are ``[N, 1, H, W]``.
    """
    mb, gt = binary_masks.bool().cpu(), gt_masks.bool().cpu()
    lab = labels.bool().cpu()
    gates = F.interpolate(gate_grid.float().cpu(), size=gt.shape[-2:], mode="nearest")
    missed = gt & ~mb
    img = lab.view(-1, 1, 1, 1).expand_as(gt)
    normal_images = ~lab
    closed = None
    if normal_images.any():
        closed = float((gate_grid.float().cpu()[normal_images].flatten(1).amin(dim=1) < 0.5).float().mean())
    pred = predicted_error.float().cpu()
    miss_frac = patch_fraction(missed, m)
    pos = miss_frac >= defect_fraction
    neg = patch_fraction(gt, m) == 0
    score = None
    if pos.any() and neg.any():
        score = auroc(torch.cat([pred[pos], pred[neg]]),
                      torch.cat([torch.ones(int(pos.sum())), torch.zeros(int(neg.sum()))]))
    out = HeadDiagnostics(
        gate_unmasked_defect=_mean(gates, missed),
        gate_normal_defective=_mean(gates, img & ~gt),
        gate_normal_images=_mean(gates, ~img),
        closed_normal_images=closed,
        auroc_unmasked_defect=score,
        unmasked_defect_patches=int(pos.sum()),
    )
    return out.model_copy(update={"found_missed_defects": found_missed_defects(out)})


def found_missed_defects(d: HeadDiagnostics) -> bool | None:
    """True when the head ranks unmasked-defect patches above normal ones (AUROC >= 0.7) *and*
    closes its gates there clearly more (by >= 0.1) than on normal pixels of the same images;
    None when the test set has no unmasked defect."""
    if d.auroc_unmasked_defect is None or d.gate_unmasked_defect is None or d.gate_normal_defective is None:
        return None
    return bool(d.auroc_unmasked_defect >= FOUND_AUROC
                and d.gate_normal_defective - d.gate_unmasked_defect >= FOUND_GATE_GAP)


def summary_line(d: Diagnostics) -> str:
    """One line for reports: did the head find the missed defects, with the numbers behind it."""
    mk = d.mask
    cov = "n/a" if mk.defect_pixels_masked is None else f"{mk.defect_pixels_masked:.0%}"
    base = f"mask covers {cov} of defect pixels"
    h = d.head
    if h is None:
        return base + " (no head)"

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    verdict = {True: "head FOUND the missed defects", False: "head did NOT find the missed defects",
               None: "no unmasked defect to find"}[h.found_missed_defects]
    return (f"{verdict}: gate on unmasked defects {f(h.gate_unmasked_defect)} vs normal pixels of defective images "
            f"{f(h.gate_normal_defective)} and normal images {f(h.gate_normal_images)}; l_hat AUROC unmasked-defect "
            f"vs normal patches {f(h.auroc_unmasked_defect)}; {base}")


__all__ = [
    "Diagnostics", "HeadDiagnostics", "MaskDiagnostics", "found_missed_defects", "head_diagnostics",
    "mask_diagnostics", "patch_fraction", "summary_line",
]
