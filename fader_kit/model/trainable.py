"""What the FADeR training loop needs of a model, as a protocol.

:func:`fader_kit.model.training.train_fader` trains any model with these members;
:class:`fader_kit.model.fader.FaderModel` is the one the package builds, and its ``fit`` calls the
loop.  The loop names the model by this protocol instead of importing ``fader.py``, so the two
modules do not import each other: the model builds on the loop, the loop on this description.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fader_kit.model.config import FaderConfig
from fader_kit.maskers.interfaces import Reconstructor


class GatedRun(Protocol):
    """One forward pass of a FADeR model (``fader_kit.model.fader.FaderOutput``): what training reads of it."""

    @property
    def reconstruction(self) -> Tensor: ...

    @property
    def obfuscated(self) -> Tensor: ...

    @property
    def predicted_error(self) -> Tensor | None: ...


@runtime_checkable
class TrainableFader(Protocol):
    """A reconstructor with a FADeR head on its skip connections, as the training loop uses it."""

    config: FaderConfig
    reconstructor: Reconstructor
    head: nn.Module | None
    training: bool

    @property
    def patch_size(self) -> int: ...

    @property
    def needs_scores(self) -> bool: ...

    def __call__(self, images: Tensor, binary_mask: Tensor | None = None, detach_gates: bool = False,
                 scores: Tensor | None = None) -> GatedRun: ...

    def fit_input_norm(self, images: Tensor, binary_masks: Tensor | None = None, scores: Tensor | None = None,
                       batch_size: int = 16) -> None: ...

    def calibrate(self, images: Tensor, binary_masks: Tensor | None = None, batch_size: int = 16,
                  scores: Tensor | None = None, threshold: float | None = None) -> Tensor: ...

    def to(self, device: torch.device | str) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
