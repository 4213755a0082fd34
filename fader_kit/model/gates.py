"""How the head's l_hat becomes skip-connection gates: gate strategies, and the gate arithmetic.

A gate strategy gives l_hat ``[B, N]`` for the patches of I' (:meth:`GateStrategy.predict`, by default
the learned head's prediction) and turns it into the gate grid ``[B, 1, H/m, W/m]``
(:meth:`GateStrategy.grid`, by default M_S = 1 - normalise(l_hat) or the hard ablation gate, per
:class:`~fader_kit.model.config.FaderConfig`).  :attr:`~fader_kit.model.config.FaderConfig.gates` names a source
strategy, then any *modifiers*: a modifier wraps the strategy before it and changes one step (where the
calibrated gates end, which patches keep their gate at 1).  The core registers ``head`` (the paper)
and ``open`` (the control); a plugin registers more (docs/writing-a-head.md).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.model.config import FaderConfig
from fader_kit.model.head_inputs import HeadHost
from fader_kit.util.quantiles import quantiles


# -- the arithmetic ------------------------------------------------------------------------------
def calibration_from(pred: Tensor, quantile: float = 0.995, width: float = 2.0, end: float | None = None) -> Tensor:
    """The calibrated normaliser's two levels ``[start, end]`` from l_hat of normal patches (any shape):
    ``start`` = the ``quantile`` of the predictions, ``end`` = median + width * (start - median), or the
    ``end`` given (e.g. the masker's threshold) when it lies above ``start``.  Gates stay 1 up to
    ``start`` and reach 0 at ``end``; ``end > start`` always holds (an ``end`` at or below ``start``
    becomes a step just above ``start``)."""
    flat = pred.detach().flatten().float()
    start = torch.tensor(quantiles(flat, [quantile], what="calibration of the head's predictions")[0])
    median = flat.median()  # the lower middle value, as torch defines it
    tiny = 1e-6 * (flat.abs().max() + 1e-12)
    if end is not None:
        return torch.stack([start, torch.maximum(torch.tensor(float(end)), start + tiny)]).to(pred.dtype)
    spread = torch.clamp(start - median, min=tiny)
    return torch.stack([start, median + width * spread]).to(pred.dtype)


def normalise(pred: Tensor, how: str = "minmax", eps: float = 1e-8, calibration: Tensor | None = None) -> Tensor:
    """Normalisation of l_hat ``[B, N]`` to [0, 1]: per image min-max (paper) or sigmoid of the
    z-score; or ``calibrated``: one fixed scale for every image (``calibration`` = [start, end] from
    :func:`calibration_from`), 0 up to ``start`` and 1 from ``end`` on, so an image whose patches all
    look normal keeps every gate at 1 (Sec. 3.3's intent) instead of closing its worst patch."""
    if how == "calibrated":
        if calibration is None or not torch.isfinite(calibration).all():
            raise ValueError("the calibrated normaliser needs a calibration: train the head (train_fader) or call "
                             "FaderModel.calibrate(normal_images) first")
        start, end = calibration[0], calibration[1]
        return ((pred - start) / (end - start)).clamp(0.0, 1.0)
    if how == "minmax":
        lo = pred.amin(dim=1, keepdim=True)
        hi = pred.amax(dim=1, keepdim=True)
        return (pred - lo) / (hi - lo + eps)
    if how == "sigmoid":
        mu = pred.mean(dim=1, keepdim=True)
        sd = pred.std(dim=1, keepdim=True)
        return torch.sigmoid((pred - mu) / (sd + eps))
    raise ValueError(f"unknown normaliser {how!r}; use 'minmax', 'sigmoid' or 'calibrated'")


def soft_mask(pred: Tensor, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """M_S = 1 - normalise(l_hat): 0 at the patch most expected to be defective, 1 at the least."""
    return 1.0 - normalise(pred, how, calibration=calibration)


def hard_mask(pred: Tensor, threshold: float = 0.5, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """Ablation: binary gate, 0 where normalise(l_hat) > threshold, else 1."""
    return (normalise(pred, how, calibration=calibration) <= threshold).to(pred.dtype)


def theta(gate_grid: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Resize the patch-grid gate ``[B, 1, gh, gw]`` to a skip feature's ``size``.

    ``nearest``: upsampling repeats each patch's gate over the feature cells it covers.  Where
    a skip map is coarser than the patch grid, plain nearest sampling would drop patches
    (and with them a suspected defect), so each feature cell takes the smallest gate -- the
    strongest attenuation -- of the patches it covers.  ``bilinear`` (the ablation) smooths.
    """
    gh, gw = gate_grid.shape[-2:]
    h, w = size
    if mode == "nearest":
        if h < gh or w < gw:
            return -F.adaptive_max_pool2d(-gate_grid, (h, w))
        return F.interpolate(gate_grid, size=(h, w), mode="nearest")
    if mode == "bilinear":
        return F.interpolate(gate_grid, size=(h, w), mode="bilinear", align_corners=False, antialias=h < gh)
    raise ValueError(f"unknown theta mode {mode!r}; use 'nearest' or 'bilinear'")


# -- strategies ----------------------------------------------------------------------------------
class GateStrategy:
    """One gate strategy: the paper's learned gates unless a subclass overrides a step.

    A *source* (``modifier = False``) comes first in :attr:`~fader_kit.model.config.FaderConfig.gates`; each
    *modifier* after it is built as ``Strategy(config, inner)`` and delegates every step it does not
    change to ``inner``.  ``reads_scores`` / ``reads_threshold``: the strategy needs the masker's score map
    / its fitted threshold (the model and the pipelines then pass them); ``learned``: l_hat is the
    learned head's prediction (False where it comes from elsewhere).  A constructor may refuse a
    configuration it cannot serve with a :class:`ValueError` naming the setting."""

    name: ClassVar[str] = ""
    modifier: ClassVar[bool] = False
    own_reads_scores: ClassVar[bool] = False
    own_reads_threshold: ClassVar[bool] = False
    own_learned: ClassVar[bool] = True

    def __init__(self, config: FaderConfig, inner: "GateStrategy | None" = None) -> None:
        self.config, self.inner = config, inner

    @property
    def reads_scores(self) -> bool:
        return self.own_reads_scores or (self.inner is not None and self.inner.reads_scores)

    @property
    def reads_threshold(self) -> bool:
        return self.own_reads_threshold or (self.inner is not None and self.inner.reads_threshold)

    @property
    def learned(self) -> bool:
        return self.inner.learned if self.inner is not None else self.own_learned

    def predict(self, host: HeadHost, obfuscated: Tensor, feats: list[Tensor] | None, scores: Tensor | None) -> Tensor:
        """l_hat ``[B, N]``: the learned head's prediction (``host.head_prediction``)."""
        if self.inner is not None:
            return self.inner.predict(host, obfuscated, feats, scores)
        return host.head_prediction(obfuscated, feats, scores)

    def grid(self, host: HeadHost, pred: Tensor, grid: tuple[int, int], binary_mask: Tensor | None,
             calibration: Tensor | None) -> Tensor:
        """The gate grid ``[B, 1, gh, gw]``: M_S (or the hard ablation gate) of l_hat."""
        if self.inner is not None:
            return self.inner.grid(host, pred, grid, binary_mask, calibration)
        cfg = self.config
        if cfg.masking == "hard":
            g = hard_mask(pred, cfg.hard_threshold, cfg.normaliser, calibration)
        else:
            g = soft_mask(pred, cfg.normaliser, calibration)
        return g.reshape(pred.shape[0], 1, *grid)

    def calibration_end(self, host: HeadHost, threshold: float | None) -> float | None:
        """Where the calibrated gates reach 0 (None: median + width * spread of the normal l_hat)."""
        return self.inner.calibration_end(host, threshold) if self.inner is not None else None


class HeadGates(GateStrategy):
    """The paper: the learned head's l_hat through the normaliser (soft mask or hard ablation)."""

    name = "head"


class OpenGates(GateStrategy):
    """The control: the head and the decoder are trained exactly as with ``head`` but every gate is 1
    (skips open), in training and at test, so what FADeR's decoder fine-tuning and BatchNorm
    re-estimation give without any gating can be told from what the head gives."""

    name = "open"

    def grid(self, host: HeadHost, pred: Tensor, grid: tuple[int, int], binary_mask: Tensor | None,
             calibration: Tensor | None) -> Tensor:
        return torch.ones(pred.shape[0], 1, *grid, dtype=pred.dtype, device=pred.device)


#: the core's gate strategies, registered by fader_kit.model.variants
CORE_GATES: tuple[type[GateStrategy], ...] = (HeadGates, OpenGates)
