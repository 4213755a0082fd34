"""What a detector scores with: the masker alone, plain EAR, EAR with the FADeR head, or a fused map.

Every kind is a detector of its own (``fader-kit fit --score KIND``), calibrated the same way
(:mod:`fader_kit.deploy.thresholds`) and saved in the same folder format.  A kind says which models a fit
trains and a folder ships, what it needs from the masker for a batch, and how it turns that into
anomaly maps; the image score is always the map's maximum.

========  ==========================  =======================================================
kind      ships                       anomaly map
========  ==========================  =======================================================
masker    the fitted masker only      the masker's own score map (no U-Net trained or saved)
ear       masker + EAR U-Net          plain EAR: MSGMS map of the reconstruction of the image
                                      with the masker's mask obfuscated (the paper's baseline)
fader     masker + EAR + FADeR head   the same with the FADeR head's gates (the paper's)
fused     masker + EAR U-Net          plain EAR's map fused with the masker's score map
                                      (:func:`fader_kit.model.fusion.fuse_maps`; the ``pseudo`` rule's
                                      weight and both scales are stored in the calibration)
========  ==========================  =======================================================

The fused kind fuses *plain EAR's* map, as the measurement that chose the ``pseudo`` rule did
(docs/results/fader-head-round4.md): there it was the first rule with no cell below the better of
its two maps.  ``fader-kit evaluate --fused`` reports the same EAR + masker row.

The module imports no torch at load time, so the command line's ``--help`` can list the kinds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from fader_kit.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from fader_kit.model.fader import FaderModel
    from fader_kit.model.fusion import FusionScales
    from fader_kit.maskers.interfaces import Masker

ScoreName = Literal["masker", "ear", "fader", "fused"]
#: Every kind, in the order a user reads them (simplest first).
SCORE_NAMES: tuple[ScoreName, ...] = get_args(ScoreName)
#: What :func:`~fader_kit.deploy.fit.fit_detector` scores with unless told (``fader-kit fit`` chooses:
#: :mod:`fader_kit.deploy.auto_select`).
DEFAULT_SCORE: ScoreName = "fader"
#: What every detector folder before score kinds (format versions 1 and 2) scores with.
LEGACY_SCORE: ScoreName = "fader"


@dataclass(frozen=True)
class ScoreKind:
    """One kind of detector score (see the module notes)."""

    name: ScoreName
    summary: str
    unet: bool  # the EAR U-Net is trained and shipped (``model.safetensors``)
    head: bool  # the FADeR head is trained and shipped with it
    fused: bool  # the map is fused with the masker's score map (fusion scales in the calibration)

    @property
    def needs_mask(self) -> bool:
        """The reconstruction reads the masker's binary mask."""
        return self.unet

    @property
    def needs_scores(self) -> bool:
        """The map is (or holds) the masker's continuous score map."""
        return self.fused or not self.unet

    def masker_outputs(self, masker: "Masker", images: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(binary mask, score map)`` of ``images`` as far as this kind reads them (None where not)."""
        mask = masker.mask(images) if self.needs_mask else None
        scores = masker.score_map(images).float() if self.needs_scores else None
        return mask, scores

    def maps(self, images: Tensor, mask: Tensor | None, scores: Tensor | None, model: "FaderModel | None",
             fusion: "FusionScales | None", kernel_size: int) -> Tensor:
        """Anomaly maps ``[B, 1, S, S]`` from the masker's outputs (:meth:`masker_outputs`)."""
        if not self.unet:
            return _given(scores, "the masker's score map")
        recon = _given(model, "the EAR model").anomaly_map(images, mask, kernel_size)
        if not self.fused:
            return recon
        from fader_kit.model.fusion import fuse_maps

        return fuse_maps(recon, _given(scores, "the masker's score map").to(recon.device),
                         _given(fusion, "the fusion scales"))


def _given(value: Any, what: str) -> Any:
    if value is None:
        raise ValueError(f"this score needs {what}")
    return value


KINDS: dict[str, ScoreKind] = {k.name: k for k in (
    ScoreKind("masker", "the masker's own score map alone (no U-Net)", unet=False, head=False, fused=False),
    ScoreKind("ear", "plain EAR: reconstruction of the image with the masker's mask obfuscated", unet=True,
              head=False, fused=False),
    ScoreKind("fader", "EAR with the FADeR head (the paper's method)", unet=True, head=True, fused=False),
    ScoreKind("fused", "plain EAR's map fused with the masker's score map (mix chosen on pseudo-anomalies)",
              unet=True, head=False, fused=True),
)}


def fused_twin(fusion: "FusionScales | None") -> ScoreName | None:
    """The kind a fused score is in all but name: ``ear`` when its mix puts all the weight on the
    reconstruction's map, ``masker`` when on the masker's (a monotone rescaling of that one map:
    the same image ranking), else None.  A selection leaves such a twin out of the race, so its
    margin is taken against a different detector rather than a copy."""
    if fusion is None or fusion.rule != "weighted" or fusion.weight not in (0.0, 1.0):
        return None
    return "ear" if fusion.weight == 1.0 else "masker"


def score_kind(name: Any, argument: str = "--score") -> ScoreKind:
    """The kind called ``name``, or a ConfigError naming ``argument`` and every kind."""
    if not isinstance(name, str) or name not in KINDS:
        raise ConfigError(f"argument {argument} {name!r}: expected one of {', '.join(SCORE_NAMES)}")
    return KINDS[name]


def kind_maps(kind: ScoreKind, images: Tensor, masker: "Masker", model: "FaderModel | None",
              fusion: "FusionScales | None", kernel_size: int, step: Any = None) -> Tensor:
    """``kind``'s anomaly maps of a batch already on the models' device; ``step(name)`` (a context
    manager, e.g. a :class:`~fader_kit.util.timing.Stopwatch`) times ``masker`` and ``fader_map``."""
    from contextlib import nullcontext

    import torch

    from fader_kit.util.timing import synchronize

    timed = step is not None
    step = step if timed else (lambda name: nullcontext())
    with torch.no_grad():
        with step("masker"):
            mask, scores = kind.masker_outputs(masker, images)
            if timed:
                synchronize(images.device)
        with step("fader_map"):
            return kind.maps(images, mask, scores, model, fusion, kernel_size)


def batched_maps(kind: ScoreKind, images: Tensor, masker: "Masker", model: "FaderModel | None",
                 fusion: "FusionScales | None", kernel_size: int, *, batch_size: int,
                 device: torch.device | str) -> Tensor:
    """:func:`kind_maps` of many images ``[N, 3, S, S]`` in batches on ``device``: maps ``[N, 1, S, S]``
    (float, CPU), e.g. of the held-out normal images a detector is calibrated on."""
    import torch

    from fader_kit.util.batching import device_batches

    if model is not None:
        model.to(device).eval()
    return torch.cat([kind_maps(kind, x, masker, model, fusion, kernel_size).float().cpu()
                      for (x,) in device_batches(images, batch_size=batch_size, device=device)])
