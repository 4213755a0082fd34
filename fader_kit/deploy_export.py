"""A detector folder as one ONNX graph that takes images only, and predicting with it.

Graph interface::

    inputs   images        float32 [B, 3, S, S]  RGB in [0, 1], converted as the training images
    outputs  anomaly_map   float32 [B, 1, S, S]  smoothed MSGMS map
             score         float32 [B]           image score, the map's maximum

The masker runs inside the graph, which needs a masker that can give itself as a torch module
(:meth:`fader_kit.interfaces.Masker.mask_module`; ``patch_stats``, ``msflow`` and ``ami_net`` can).  The calibration
(thresholds, normalisation, held-out normal scores) and the detector's settings travel in the
model's metadata (``metadata_props``: ``fader_kit.calibration``, ``fader_kit.detector``), so
``fader-kit predict --onnx`` judges images exactly as the torch detector does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .calibration import Calibration
from .errors import ConfigError, ModelDirError
from .export import (ExportError, ExportReport, ScoringGraph, check_parity, onnx_session, require_onnx,
                     unexportable_reason, write_onnx)

OUTPUTS = ("anomaly_map", "score")
CALIBRATION_KEY = "fader_kit.calibration"
DETECTOR_KEY = "fader_kit.detector"


class DetectorGraph(nn.Module):
    """``images -> (anomaly_map, score)``: the masker's module feeding the FADeR scoring graph."""

    def __init__(self, masker_module: nn.Module, scoring: ScoringGraph) -> None:
        super().__init__()
        self.masker = masker_module.eval()
        self.scoring = scoring.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.scoring(images, self.masker(images))


def detector_graph(detector: Any) -> DetectorGraph:
    """The detector's own (loaded) modules as one graph; an ExportError says why a head or masker
    cannot be exported, before anything is traced."""
    reason = unexportable_reason(detector.model)
    if reason is not None:
        raise ExportError(f"head variant {detector.settings.fader_variant!r} cannot be exported to ONNX: {reason}")
    module = detector.masker.mask_module()
    if module is None:
        raise ExportError(f"masker {detector.settings.masker!r} cannot be exported to ONNX (it gives no mask module); "
                          "export a detector fitted with an exportable masker (patch_stats, msflow, ami_net), or export the "
                          "FADeR model alone from an evaluate run folder and feed its binary_mask input yourself")
    model = detector.model.cpu().eval()
    # eval() on the root too: torch.onnx.export restores the root's mode on every submodule afterwards
    return DetectorGraph(module.cpu(), ScoringGraph(model, detector.image_size, detector.settings.kernel_size)).eval()


def export_detector(folder: str | Path, out: str | Path, *, opset: int = 17, check: bool = True,
                    tolerance: float = 1e-4, check_images: Sequence[str | Path] | None = None) -> ExportReport:
    """``fader-kit export --onnx OUT MODEL_DIR``: write the detector as one graph (module notes).

    The graph traces the loaded detector's modules.  The check runs the graph with onnxruntime and
    the torch detector (:meth:`~fader_kit.detector.Detector.score_batch`) on real images --
    ``check_images``, else the fit's held-out normal images where they are on this machine -- and
    refuses the graph when the anomaly map or the score differ by more than ``tolerance``."""
    from .detector import Detector

    require_onnx()  # the missing extra is one line, before the detector is loaded
    detector = Detector.load(folder, device="cpu")
    graph = detector_graph(detector)  # refuses an unexportable head or masker before any tracing
    size = detector.image_size
    images, source = parity_images(detector, check_images) if check else (None, "")
    out = Path(out)
    t0 = time.perf_counter()
    write_onnx(graph, (torch.rand(2, 3, size, size),), out, ["images"], opset, {
        "image_size": str(size), "patch_size": str(detector.model.patch_size),
        "head": str(detector.model.head is not None).lower(), "inputs": "images",
        CALIBRATION_KEY: detector.calibration.model_dump_json(),
        DETECTOR_KEY: detector.manifest.model_dump_json(include={"format", "format_version", "created_by", "settings"}),
    })
    report = ExportReport(out, size, detector.model.head is not None, opset, out.stat().st_size / 1e6,
                          time.perf_counter() - t0)
    if images is not None:
        d_map, d_score = parity(detector, out, images)
        report = ExportReport(**{**report.__dict__, "max_abs_diff_map": d_map, "max_abs_diff_score": d_score,
                                 "checked_on": source})
        check_parity(out, d_map, d_score, tolerance)
    return report


#: Images the parity check runs (enough to cover flagged and unflagged patches, few enough to be quick).
PARITY_IMAGES = 8


def parity_images(detector: Any, check_images: Sequence[str | Path] | None = None) -> tuple[Tensor, str]:
    """``([N, 3, S, S], description)``: the images the parity check runs.  ``check_images`` when given
    (files or folders), else the fit's held-out normal images under the folder it was fitted on, when
    they are on this machine (names that would leave that folder are skipped)."""
    from .data.imageio import IMAGE_EXTENSIONS
    from .imagefiles import expand_inputs, load_array, to_tensor

    if check_images is not None:
        paths = expand_inputs([str(p) for p in check_images])[:PARITY_IMAGES]
        source = f"{len(paths)} image(s) of --check-images"
    else:
        t = detector.manifest.training
        root = Path(t.normal_folder)
        paths = []
        if root.is_dir():
            base = root.resolve()
            for name in t.holdout_files:
                path = (root / name).resolve()
                if base in path.parents and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    paths.append(path)
                if len(paths) == PARITY_IMAGES:
                    break
        if not paths:
            raise ExportError(f"the onnxruntime-vs-torch check runs on images of the fit, and the held-out normal images "
                              f"under {root} are not on this machine: pass --check-images DIR (a few normal images "
                              "of the part) or --no-check")
        source = f"{len(paths)} held-out normal images of the fit (under {root})"
    return to_tensor([load_array(p, detector.image_size)[0] for p in paths]), source


def parity(detector: Any, path: Path, images: Tensor) -> tuple[float, float]:
    """Max |difference| (map, score) between onnxruntime running the graph at ``path`` and the torch
    detector itself (its masker and model, not the traced wrapper) on ``images``."""
    ref_map, ref_score = detector.score_batch(images)
    amap, score = onnx_session(path).run(list(OUTPUTS), {"images": images.numpy()})
    return float((torch.from_numpy(amap) - ref_map).abs().max()), float((torch.from_numpy(score) - ref_score).abs().max())


class OnnxScorer:
    """An exported detector graph run with onnxruntime, with the calibration from its metadata."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelDirError(f"ONNX model {path} does not exist")
        onnx, _ = require_onnx()
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if CALIBRATION_KEY not in meta or meta.get("inputs") != "images":
            raise ConfigError(f"{path} is not a detector graph (no {CALIBRATION_KEY} metadata): export it with "
                              "fader-kit export --onnx OUT.onnx MODEL_DIR")
        self.path = path
        try:
            self.calibration = Calibration.model_validate_json(meta[CALIBRATION_KEY], strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ModelDirError(f"{path}: metadata {CALIBRATION_KEY}: field {where}: {first['msg']}") from None
        self.detector_meta = json.loads(meta.get(DETECTOR_KEY, "{}"))
        self.image_size = int(meta["image_size"])
        self.session = onnx_session(path, threads)

    def score_batch(self, images: Tensor, watch: Any = None) -> tuple[Tensor, Tensor]:
        from contextlib import nullcontext

        step = watch if watch is not None else (lambda name: nullcontext())
        with step("onnx"):
            amap, score = self.session.run(list(OUTPUTS), {"images": images.float().cpu().numpy()})
        return torch.from_numpy(amap), torch.from_numpy(score)
