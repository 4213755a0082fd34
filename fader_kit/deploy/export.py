"""A detector folder as one ONNX graph that takes images only, and predicting with it.

Graph interface::

    inputs   images        float32 [B, 3, S, S]  RGB in [0, 1], converted as the training images
    outputs  anomaly_map   float32 [B, 1, S, S]  the detector's map (its score kind's)
             score         float32 [B]           image score, the map's maximum

The masker runs inside the graph, which needs a masker that can give itself as torch modules
(:meth:`fader_kit.maskers.interfaces.Masker.mask_module` for the binary mask of EAR / FADeR,
:meth:`~fader_kit.maskers.interfaces.Masker.score_module` for the score map of the ``masker`` and ``fused``
kinds; ``patch_stats``, ``msflow`` and ``ami_net`` give both).  Per score kind (:mod:`fader_kit.deploy.score_kinds`) the graph holds: the
masker's score module alone (``masker``); mask module + EAR / FADeR (``ear``, ``fader``); mask
module + EAR and the score module, the two maps fused with the stored scales (``fused``).  The calibration
(thresholds, normalisation, held-out normal scores) and the detector's settings travel in the
model's metadata (``metadata_props``: ``fader_kit.calibration``, ``fader_kit.detector``), so
``fader-kit predict --onnx`` judges images exactly as the torch detector does.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from fader_kit.deploy.thresholds import Calibration
from fader_kit.errors import ConfigError, ModelDirError
from fader_kit.model.onnx_export import (ExportError, ExportReport, ScoringGraph, check_parity, onnx_session, require_onnx,
                     unexportable_reason, write_onnx)
from fader_kit.model.fusion import FusionScales, fuse_maps
from fader_kit.model.scoring import image_score

OUTPUTS = ("anomaly_map", "score")
CALIBRATION_KEY = "fader_kit.calibration"
DETECTOR_KEY = "fader_kit.detector"


class DetectorGraph(nn.Module):
    """``images -> (anomaly_map, score)``: the masker's modules feeding the scoring graph of the
    detector's score kind (see the module notes); ``masker``/``scoring`` None where the kind has no
    reconstruction, ``scores`` None where it does not read the masker's score map."""

    def __init__(self, masker_module: nn.Module | None, scoring: ScoringGraph | None,
                 scores: nn.Module | None = None, fusion: FusionScales | None = None) -> None:
        super().__init__()
        self.masker = masker_module.eval() if masker_module is not None else None
        self.scoring = scoring.eval() if scoring is not None else None
        self.scores = scores.eval() if scores is not None else None
        self.fusion = fusion

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.scoring is None or self.masker is None:
            amap = self._scores(images)
        else:
            amap, score = self.scoring(images, self.masker(images))
            if self.fusion is None:
                return amap, score
            amap = fuse_maps(amap, self._scores(images), self.fusion)
        return amap, image_score(amap)

    def _scores(self, images: Tensor) -> Tensor:
        if self.scores is None:
            raise ExportError("this detector graph has no score module")
        return self.scores(images).float()


def detector_graph(detector: Any) -> DetectorGraph:
    """The detector's own (loaded) modules as one graph, as its score kind scores; an ExportError says
    why a head or masker cannot be exported, before anything is traced."""
    kind, name = detector.settings.kind, detector.settings.masker
    scores = None
    if kind.needs_scores:
        scores = detector.masker.score_module()
        if scores is None:
            raise ExportError(f"masker {name!r} cannot be exported to ONNX as a score map (it gives no score module), "
                              f"which a {kind.name!r} detector needs; fit one with an exportable masker (patch_stats, "
                              "msflow, ami_net), or with --score ear or fader")
        scores = scores.cpu()
    if not kind.unet:
        return DetectorGraph(None, None, scores).eval()
    reason = unexportable_reason(detector.model)
    if reason is not None:
        raise ExportError(f"head variant {detector.settings.fader_variant!r} cannot be exported to ONNX: {reason}")
    module = detector.masker.mask_module()
    if module is None:
        raise ExportError(f"masker {name!r} cannot be exported to ONNX (it gives no mask module); "
                          "export a detector fitted with an exportable masker (patch_stats, msflow, ami_net), or export the "
                          "FADeR model alone from an evaluate run folder and feed its binary_mask input yourself")
    model = detector.model.cpu().eval()
    # eval() on the root too: torch.onnx.export restores the root's mode on every submodule afterwards
    scoring = ScoringGraph(model, detector.image_size, detector.settings.kernel_size)
    return DetectorGraph(module.cpu(), scoring, scores, detector.calibration.fusion if kind.fused else None).eval()


def export_detector(folder: str | Path, out: str | Path, *, opset: int = 17, check: bool = True,
                    tolerance: float = 1e-4, check_images: Sequence[str | Path] | None = None,
                    int8: bool = False) -> ExportReport:
    """``fader-kit export --onnx OUT MODEL_DIR``: write the detector as one graph (module notes).

    The graph traces the loaded detector's modules.  The check runs the graph with onnxruntime and
    the torch detector (:meth:`~fader_kit.deploy.detector.Detector.score_batch`) on real images --
    ``check_images``, else the fit's held-out normal images where they are on this machine -- and
    refuses the graph when the anomaly map or the score differ by more than ``tolerance``.

    ``int8``: ``out`` gets the graph with the U-Net's convolutions in int8 (:mod:`fader_kit.deploy.quantize`),
    calibrated on those images (up to :data:`CALIBRATION_IMAGES`); the report then says how many of
    their decisions changed and how far the scores moved against the torch detector."""
    from fader_kit.deploy.detector import Detector

    require_onnx()  # the missing extra is one line, before the detector is loaded
    detector = Detector.load(folder, device="cpu")
    graph = detector_graph(detector)  # refuses an unexportable head or masker before any tracing
    size = detector.image_size
    images, source = parity_images(detector, check_images, CALIBRATION_IMAGES if int8 else PARITY_IMAGES) \
        if check or int8 else (None, "")
    out = Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx" if int8 else out
        write_detector_graph(detector, float_path, opset, graph)
        report = ExportReport(out, size, detector.kind.head, opset, 0.0, 0.0,
                              what=f"score {detector.kind.name}: {detector.kind.summary}")
        if images is not None and check:
            first = images[:PARITY_IMAGES]
            d_map, d_score = parity(detector, float_path, first)
            checked = source if len(first) == len(images) else f"the first {len(first)} of {source}"
            report = replace(report, max_abs_diff_map=d_map, max_abs_diff_score=d_score, checked_on=checked)
            check_parity(out, d_map, d_score, tolerance)
        if int8 and images is not None:
            report = replace(report, notes=(int8_summary(detector, float_path, out, images, source),))
    return replace(report, megabytes=out.stat().st_size / 1e6, seconds=time.perf_counter() - t0)


def write_detector_graph(detector: Any, path: Path, opset: int = 17, graph: DetectorGraph | None = None) -> Path:
    """Trace ``detector`` (its :func:`detector_graph`) into ``path`` with the calibration and settings
    in the metadata; no parity check (:func:`export_detector` runs one)."""
    size = detector.image_size
    model = detector.model
    return write_onnx(graph or detector_graph(detector), (torch.rand(2, 3, size, size),), path, ["images"], opset, {
        "image_size": str(size), "head": str(detector.kind.head).lower(), "inputs": "images",
        "score": detector.kind.name, **({"patch_size": str(model.patch_size)} if model is not None else {}),
        CALIBRATION_KEY: detector.calibration.model_dump_json(),
        DETECTOR_KEY: detector.manifest.model_dump_json(include={"format", "format_version", "created_by", "settings"}),
    })


def int8_summary(detector: Any, float_path: Path, out: Path, images: Tensor, source: str) -> str:
    """Quantise ``float_path`` into ``out``, calibrated on ``images``; one line saying how its decisions
    and scores compare with the torch detector's on those images."""
    from fader_kit.deploy.quantize import quantize_graph, score_parity

    quantize_graph(float_path, out, images)
    _, ref = detector.score_batch(images)
    _, got = onnx_session(out).run(list(OUTPUTS), {"images": images.numpy()})
    result = score_parity(ref.numpy(), got, detector.calibration.image_threshold)
    return (result.summary("int8 graph (U-Net convolutions) vs the torch detector") +
            f" ({source}, also its calibration images)")


#: Images the parity check runs (enough to cover flagged and unflagged patches, few enough to be quick).
PARITY_IMAGES = 8
#: Images an int8 graph's activation ranges are calibrated on (at most).
CALIBRATION_IMAGES = 32


def parity_images(detector: Any, check_images: Sequence[str | Path] | None = None,
                  limit: int = PARITY_IMAGES) -> tuple[Tensor, str]:
    """``([N, 3, S, S], description)``: the images the parity check runs.  ``check_images`` when given
    (files or folders), else the fit's held-out normal images under the folder it was fitted on, when
    they are on this machine (names that would leave that folder are skipped)."""
    from fader_kit.data.imageio import IMAGE_EXTENSIONS
    from fader_kit.deploy.imagefiles import expand_inputs, load_array, to_tensor

    if check_images is not None:
        paths = expand_inputs([str(p) for p in check_images])[:limit]
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
                if len(paths) == limit:
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
        from fader_kit.util.threads import usable_cpus

        self.threads = threads or usable_cpus()
        self.engine = "onnxruntime int8" if "quantization" in meta else "onnxruntime"
        self.session = onnx_session(path, self.threads)

    def score_batch(self, images: Tensor, watch: Any = None) -> tuple[Tensor, Tensor]:
        from contextlib import nullcontext

        step = watch if watch is not None else (lambda name: nullcontext())
        with step("onnx"):
            amap, score = self.session.run(list(OUTPUTS), {"images": images.float().cpu().numpy()})
        return torch.from_numpy(amap), torch.from_numpy(score)
