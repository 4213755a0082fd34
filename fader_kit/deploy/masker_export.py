"""A fitted masker alone as an ONNX graph, and how closely onnxruntime reproduces it.

Graph interface::

    inputs   images     float32 [B, 3, S, S]  RGB in [0, 1]
    outputs  score_map  float32 [B, 1, S, S]  the masker's ``score_map``
             mask       bool    [B, 1, S, S]  the masker's ``mask`` (M_B)

It traces the module of :meth:`fader_kit.maskers.interfaces.Masker.mask_module` (its ``maps``), the same
module a detector graph carries, so the parity measured here is the masker's share of a detector
graph's error: the largest score difference, and the share of mask pixels that flip (a pixel
whose score lies within float rounding of the threshold can flip; nothing else should).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fader_kit.model.onnx_export import ExportError, onnx_session, require_onnx, write_onnx

MASKER_OUTPUTS = ("score_map", "mask")


class MaskerGraph(nn.Module):
    """``images -> (score_map, mask)`` of a masker's exportable module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module: Any = module.eval()  # a mask module with maps() (checked by masker_graph)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.module.maps(images)


def masker_graph(masker: Any) -> MaskerGraph:
    """The fitted masker as a :class:`MaskerGraph` on the CPU; an ExportError names a masker that
    gives no module (or one without ``maps``)."""
    name = masker.info.name
    module = masker.mask_module()
    if module is None:
        raise ExportError(f"masker {name!r} cannot be exported to ONNX (it gives no mask module); "
                          "the exportable maskers are patch_stats, msflow and ami_net")
    if not callable(getattr(module, "maps", None)):
        raise ExportError(f"masker {name!r}'s mask module has no maps(images) -> (score_map, mask): it can go "
                          "inside a detector graph, but not be exported alone")
    return MaskerGraph(module.cpu()).eval()


def export_masker(masker: Any, out: str | Path, image_size: int, *, opset: int = 17) -> Path:
    """Write the fitted ``masker`` as an ONNX graph for ``image_size`` px images (module notes)."""
    require_onnx()
    if image_size < 16:
        raise ExportError(f"image_size must be at least 16 px, got {image_size}")
    graph = masker_graph(masker)
    example = (torch.rand(2, 3, image_size, image_size),)
    return write_onnx(graph, example, Path(out), ["images"], opset,
                      {"image_size": str(image_size), "masker": str(masker.info.name)}, MASKER_OUTPUTS)


@dataclass(frozen=True)
class MaskerParity:
    """onnxruntime vs the torch masker on the same images."""

    images: int
    max_abs_diff_map: float
    score_range: float  # max - min of the torch score maps: the scale of the difference
    mask_pixels_differing: float  # share of all mask pixels
    mask_share: float  # share of mask pixels the torch masker flags

    def summary(self) -> str:
        return (f"{self.images} images: max |score_map diff| {self.max_abs_diff_map:.2e} (score range "
                f"{self.score_range:.3g}), mask pixels differing {self.mask_pixels_differing:.2e} "
                f"(torch flags {self.mask_share:.2%})")


def masker_parity(masker: Any, path: str | Path, images: Tensor) -> MaskerParity:
    """Compare the graph at ``path`` run by onnxruntime with ``masker.score_map`` / ``masker.mask``."""
    with torch.no_grad():
        ref_map = masker.score_map(images).float().cpu()
        ref_mask = masker.mask(images).cpu()
    score_map, mask = onnx_session(path).run(list(MASKER_OUTPUTS), {"images": images.float().cpu().numpy()})
    got_map, got_mask = torch.from_numpy(score_map), torch.from_numpy(mask)
    return MaskerParity(
        images=int(images.shape[0]),
        max_abs_diff_map=float((got_map - ref_map).abs().max()),
        score_range=float(ref_map.max() - ref_map.min()),
        mask_pixels_differing=float((got_mask != ref_mask).float().mean()),
        mask_share=float(ref_mask.float().mean()),
    )
