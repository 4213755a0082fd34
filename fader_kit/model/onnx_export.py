"""ONNX export of a trained FaderModel: U-Net, FADeR head, gates, MSGMS anomaly map and image score
as one graph, so the model runs on an edge device with onnxruntime alone.

Graph interface (what a deployer feeds and gets)::

    inputs   images        float32 [B, 3, S, S]  RGB in [0, 1]
             binary_mask   bool    [B, 1, S, S]  the masker's M_B (True = suspected defect;
                                                 all False = no obfuscation)
    outputs  anomaly_map   float32 [B, 1, S, S]  smoothed MSGMS map (higher = more anomalous)
             score         float32 [B]           image score, the map's maximum

The batch is dynamic; the side ``S`` is fixed at export (the run's profile image size unless
``size`` is given), because the gate resize Theta pools the patch grid to each skip feature's
size and those sizes are baked into the graph.  The masker is not part of the graph: maskers
are plugins of any kind (ViTs, CLIP, trained networks), so the mask is an input.

The export wraps the model (:class:`ScoringGraph`) and reuses ``FaderModel.forward`` and
:func:`fader_kit.model.scoring.anomaly_map`, so the graph computes what the torch model computes; the
export checks that with onnxruntime on random inputs (``max |map_onnx - map_torch|``).

Needs the optional extra ``pip install "fader-kit[export]"`` (onnx, onnxruntime).
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fader_kit.version import __version__
from fader_kit.errors import MissingFileError, UserError
from fader_kit.model.fader import FaderModel, theta
from fader_kit.model.scoring import anomaly_map, image_score
from fader_kit.util.files import atomic_path

INPUTS = ("images", "binary_mask")
OUTPUTS = ("anomaly_map", "score")
DEFAULT_TOLERANCE = 1e-4


class ExportError(UserError, ValueError):
    """A user-fixable export problem (missing extra, no image size, a parity failure)."""


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one ExportError that names the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the optional [export] extra ({exc.name} is not installed): "
            "pip install 'fader-kit[export]'"
        ) from None
    return onnx, onnxruntime


class _FixedSkipSizes(FaderModel):
    """The same modules as ``model``, with the skip features' sizes known in advance, so that the
    gate resize is traced with constant output sizes (ONNX needs them for adaptive pooling)."""

    def __init__(self, model: FaderModel, size: int, sizes: list[tuple[int, int]]) -> None:
        super().__init__(model.reconstructor, None, model.config, head=model.head, pretrained_backbone=False)
        # the very modules that were saved: a network an input reads through is the model's, never one rebuilt
        # from pretrained weights (which the exporting machine may lack, or hold in another version)
        for name, module in model.input_modules().items():
            setattr(self, name, module)
        if model.calibration is not None:  # the calibrated normaliser's levels travel with the graph
            self.calibration.copy_(model.calibration)
        self.grid = (size // model.patch_size, size // model.patch_size)
        self.sizes = sizes
        # bilinear Theta (the ablation) is linear and separable: one matrix per axis, taken from
        # theta itself, reproduces it -- antialiasing included, which ONNX export lacks
        self.resize_matrices = [(_axis_matrix(self.grid[0], h, model.config.theta),
                                 _axis_matrix(self.grid[1], w, model.config.theta)) for h, w in sizes]

    def skip_gates(self, gate_grid: Tensor, feats: list[Tensor]) -> list[Tensor]:
        return [self._theta(gate_grid, size, mats) for size, mats in zip(self.sizes, self.resize_matrices)]

    def _theta(self, gate_grid: Tensor, size: tuple[int, int], mats: tuple[Tensor, Tensor]) -> Tensor:
        gh, gw = self.grid
        h, w = size
        if self.config.theta == "bilinear":
            rows, cols = mats
            return rows.to(gate_grid) @ gate_grid @ cols.to(gate_grid).T
        if h < gh and w < gw and gh % h == 0 and gw % w == 0:
            # theta's min over the covered patches; with whole patches per cell, adaptive pooling
            # is plain pooling, which ONNX has (the exporter cannot size adaptive pooling here)
            return -F.max_pool2d(-gate_grid, kernel_size=(gh // h, gw // w))
        return theta(gate_grid, size, self.config.theta)


def _axis_matrix(n_in: int, n_out: int, mode: str) -> Tensor:
    """``[n_out, n_in]``: Theta along one axis, as a matrix (read off theta applied to unit vectors)."""
    if mode != "bilinear":
        return torch.zeros(0)
    eye = torch.eye(n_in).reshape(n_in, 1, n_in, 1)
    return theta(eye, (n_out, 1), mode).reshape(n_in, n_out).T.contiguous()


class ScoringGraph(nn.Module):
    """``(images, binary_mask) -> (anomaly_map, score)`` for one image side: what is exported."""

    def __init__(self, model: FaderModel, size: int, kernel_size: int = 21) -> None:
        super().__init__()
        with torch.no_grad():
            param = next(model.parameters())
            feats = model.reconstructor.eval().encode(torch.zeros(1, 3, size, size, device=param.device))
        self.model = _FixedSkipSizes(model, size, [(int(f.shape[-2]), int(f.shape[-1])) for f in feats[:-1]]).eval()
        self.size = size
        self.kernel_size = kernel_size

    def forward(self, images: Tensor, binary_mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, binary_mask)
        amap = anomaly_map(images, out.reconstruction, self.kernel_size)
        return amap, image_score(amap)


def unexportable_reason(model: FaderModel) -> str | None:
    """Why ``model``'s head cannot go into an ONNX graph, or None when it can.  Said before anything
    is traced, so the user learns the reason instead of reading a tracer's traceback."""
    if model.needs_scores:
        cfg = model.config
        return (f"the head reads the masker's score map (head_input {list(cfg.head_input)}, gates {list(cfg.gates)}), "
                "and the graph carries the binary mask only; fit or train a head that reads the image (e.g. the "
                "default pseudo_focused), or export --no-head")
    return None


@dataclass(frozen=True)
class ExportReport:
    path: Path
    size: int
    head: bool
    opset: int
    megabytes: float
    seconds: float
    max_abs_diff_map: float | None = None
    max_abs_diff_score: float | None = None
    checked_on: str = "random inputs"
    what: str | None = None  # what the graph scores with, when not (FADeR_)EAR on a given mask
    notes: tuple[str, ...] = ()  # further lines of the summary (an int8 graph's parity)

    def summary(self) -> str:
        what = self.what or ("FADeR_EAR" if self.head else "EAR (no FADeR head)")
        lines = [f"wrote {self.path} ({self.megabytes:.1f} MB, {what}, {self.size}x{self.size}, opset {self.opset}, "
                 f"{self.seconds:.1f}s)",
                 f"inputs: images float32 [B,3,{self.size},{self.size}] in [0,1], binary_mask bool [B,1,{self.size},{self.size}]; "
                 "outputs: anomaly_map float32 [B,1,H,W], score float32 [B]"]
        if self.max_abs_diff_map is not None:
            lines.append(f"onnxruntime vs torch on {self.checked_on}: max |anomaly_map diff| {self.max_abs_diff_map:.2e}, "
                         f"max |score diff| {self.max_abs_diff_score:.2e}")
        return "\n".join([*lines, *self.notes])


def resolve_source(source: str | Path, size: int | None) -> tuple[Path, int]:
    """The checkpoint behind ``source`` (a run folder with ``fader.pt``, or the file) and the image side."""
    source = Path(source)
    if source.is_dir():
        ckpt = source / "fader.pt"
        if not ckpt.is_file():
            raise MissingFileError(f"{source} holds no fader.pt: pass a fader-kit evaluate --out folder or a checkpoint")
        metrics = source / "metrics.json"
        if size is None and metrics.is_file():
            from fader_kit.model.config import get_profile

            size = get_profile(json.loads(metrics.read_text())["profile"]).image_size
    elif source.is_file():
        ckpt = source
    else:
        raise MissingFileError(f"export source not found: {source}")
    if size is None:
        raise ExportError(f"cannot tell the image size of {source} (no metrics.json beside it): pass --size")
    return ckpt, size


def write_onnx(graph: nn.Module, example: tuple[Tensor, ...], out: Path, input_names: tuple[str, ...] | list[str],
               opset: int, props: dict[str, str], output_names: tuple[str, ...] = OUTPUTS) -> Path:
    """Trace ``graph`` on ``example`` into ``out`` (atomically: a failed export leaves no file), with a
    dynamic batch axis on every input and output, ``props`` (and the producer) in its metadata, and
    the ONNX checker run on it."""
    onnx, _ = require_onnx()
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(graph, example, str(tmp), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)})
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"producer": f"fader-kit {__version__}", **props})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return out


def export_model(
    model: FaderModel,
    out: str | Path,
    size: int,
    *,
    opset: int = 17,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Write ``model`` (with its head, or plain EAR when it has none) as an ONNX graph for side ``size``."""
    require_onnx()  # the missing extra is one line, before any work
    reason = unexportable_reason(model)
    if reason is not None:
        raise ExportError(f"this FADeR model cannot be exported to ONNX: {reason}")
    if size % model.patch_size:
        raise ExportError(f"--size {size} is not divisible by the model's patch size {model.patch_size}")
    out = Path(out)
    t0 = time.perf_counter()
    model = model.cpu().eval()
    graph = ScoringGraph(model, size).eval()
    example = (torch.rand(2, 3, size, size), torch.zeros(2, 1, size, size, dtype=torch.bool))
    write_onnx(graph, example, out, INPUTS, opset, {"image_size": str(size), "patch_size": str(model.patch_size),
                                                    "head": str(model.head is not None).lower(), **(metadata or {})})
    report = ExportReport(out, size, model.head is not None, opset, out.stat().st_size / 1e6, time.perf_counter() - t0)
    if check:
        d_map, d_score = parity(graph, out, model=model)
        report = ExportReport(**{**report.__dict__, "max_abs_diff_map": d_map, "max_abs_diff_score": d_score})
        check_parity(out, d_map, d_score, tolerance)
    return report


def check_parity(out: Path, d_map: float, d_score: float, tolerance: float) -> None:
    """Raise an ExportError (and remove ``out``) when onnxruntime and torch disagree on the map or the score."""
    for what, diff in (("anomaly map", d_map), ("score", d_score)):
        if not diff <= tolerance:  # NaN too
            out.unlink(missing_ok=True)
            raise ExportError(f"{out}: onnxruntime and torch disagree by {diff:.2e} on the {what} (> {tolerance:g}); "
                              "the graph was not kept")


def export_onnx(
    source: str | Path, out: str | Path, *, size: int | None = None, head: bool = True, opset: int = 17,
    check: bool = True,
) -> ExportReport:
    """``fader-kit export --onnx OUT source``: load the checkpoint and export it (see module docstring)."""
    require_onnx()
    ckpt, size = resolve_source(source, size)
    model = FaderModel.load(ckpt)
    if not head:
        model = model.without_head()
    return export_model(model, out, size, opset=opset, check=check, metadata={"source": str(ckpt)})


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session for an exported graph, with every graph optimisation (convolution,
    BatchNorm and activation fused; the CPU's blocked layout) and ``threads`` intra-op threads
    (default: the CPUs this process may use, :func:`fader_kit.util.threads.usable_cpus`).

    Its threads wait as fader-kit's OpenMP threads do: they sleep at once unless the environment
    says ``OMP_WAIT_POLICY=ACTIVE`` (onnxruntime spins by default, which takes the cores other
    programs on an inspection PC need; measured on two cores, one predict as fast either way)."""
    import os

    from fader_kit.util.threads import usable_cpus

    _, ort = require_onnx()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or usable_cpus()
    opts.inter_op_num_threads = 1
    spin = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: Tensor, binary_mask: Tensor) -> tuple[Tensor, Tensor]:
    amap, score = session.run(list(OUTPUTS), {"images": images.float().cpu().numpy(),
                                              "binary_mask": binary_mask.bool().cpu().numpy()})
    return torch.from_numpy(amap), torch.from_numpy(score)


def parity(graph: ScoringGraph, path: str | Path, batch: int = 3, seed: int = 0,
           model: FaderModel | None = None) -> tuple[float, float]:
    """Max absolute differences (anomaly map, score) between onnxruntime and torch on random
    images and masks, at a batch size other than the traced one (the batch axis is dynamic).
    With ``model``, torch is the model itself (``FaderModel.anomaly_map``), not the traced wrapper."""
    g = torch.Generator().manual_seed(seed)
    s = graph.size
    images = torch.rand(batch, 3, s, s, generator=g)
    mask = torch.rand(batch, 1, s, s, generator=g) > 0.9
    with torch.no_grad():
        if model is None:
            ref_map, ref_score = graph(images, mask)
        else:
            ref_map = model.anomaly_map(images, mask, graph.kernel_size)
            ref_score = image_score(ref_map)
    got_map, got_score = run_onnx(onnx_session(path), images, mask)
    return float((got_map - ref_map).abs().max()), float((got_score - ref_score).abs().max())
