"""int8 quantisation of an exported detector graph, and how far its decisions move.

Only the U-Net's convolutions are quantised (static QDQ: int8 weights per output channel, uint8
activations whose ranges are calibrated on normal images of the part).  The masker, the FADeR
head, the gates and the MSGMS map stay float: quantising the gates' products and the map's
arithmetic moved the scores a hundred times more for a few percent more speed (measured on the
``cpu`` profile).  Quantisation changes the numbers, so it is never silent: :func:`score_parity`
says how many decisions changed at the threshold and how far the scores moved, and the export
prints it beside the file.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch import Tensor

#: What the quantised nodes' names contain: the U-Net of the FADeR model (torch.onnx names nodes by module path).
UNET_SCOPE = "reconstructor"
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class ScoreParity:
    """How a faster graph's image scores compare with the reference's on the same images."""

    n_images: int
    decisions_changed: int
    max_abs_diff: float
    mean_abs_diff: float
    threshold: float

    def summary(self, what: str = "int8 vs float") -> str:
        return (f"{what} on {self.n_images} images: {self.decisions_changed} decision(s) changed at the "
                f"threshold {self.threshold:.6g}; score difference max {self.max_abs_diff:.3g}, mean "
                f"{self.mean_abs_diff:.3g}")


def score_parity(reference: np.ndarray | Tensor, scores: np.ndarray | Tensor, threshold: float) -> ScoreParity:
    """Decisions changed (flagged above ``threshold`` by one and not the other) and score differences."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    got = np.asarray(scores, dtype=np.float64).ravel()
    if ref.shape != got.shape or not ref.size:
        raise ValueError(f"score_parity needs two equal, non-empty score lists, got {ref.size} and {got.size}")
    diff = np.abs(ref - got)
    return ScoreParity(int(ref.size), int(((ref > threshold) != (got > threshold)).sum()), float(diff.max()),
                       float(diff.mean()), float(threshold))


def _batches(images: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, images.shape[0], CALIBRATION_BATCH):
        yield {"images": images[i : i + CALIBRATION_BATCH]}


def quantize_graph(float_path: str | Path, out: str | Path, images: Tensor | np.ndarray) -> Path:
    """Write ``out``: the detector graph at ``float_path`` with its U-Net convolutions in int8,
    activation ranges calibrated on ``images`` ``[N, 3, S, S]`` in [0, 1] (normal images of the part;
    a few dozen are plenty).  The graph's metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fader_kit.util.files import atomic_path

    arr = images.detach().cpu().float().numpy() if isinstance(images, Tensor) else np.asarray(images, np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(arr)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    props = {p.key: p.value for p in onnx.load(str(float_path), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as target:
        pre = Path(tmp) / "pre.onnx"
        quiet = _quiet_quantizer()
        try:
            # shape inference and constant folding first: the convolutions' biases become initializers
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
            nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv" and UNET_SCOPE in n.name]
            quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_quantize=nodes)
        finally:
            logging.getLogger().setLevel(quiet)
        proto = onnx.load(str(target))
        onnx.helper.set_model_props(proto, {**props, "quantization": f"int8 ({len(nodes)} U-Net convolutions)"})
        onnx.save(proto, str(target))
    return out


def _quiet_quantizer() -> Any:
    """Silence the quantiser's advice on the root logger (it logs with ``logging.warning``); returns
    the level to restore."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    return level
