"""The two contracts of fader-kit: what a masker gives and what a reconstructor must offer.

Everything else in the toolkit is written against these: any model that implements
:class:`Reconstructor` can be wrapped by FADeR, and any :class:`Masker` (built in or installed as
a plugin) can feed the obfuscation step.  Images are always ``[B, 3, H, W]`` float tensors with
values in ``[0, 1]``, RGB.
"""
from __future__ import annotations

import abc
import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class MaskerContractError(ValueError):
    """A masker returned something the contract does not allow (a wrong shape or dtype).  It names
    the masker: the fault is in the plugin, not in the user's input."""


class MaskerInfo(BaseModel):
    """What a masker is and where its weights came from.

    ``weights`` is printed in every result row so that a number measured with randomly
    initialised weights can never pass for a pretrained one.  Conventional values:
    ``hub:<model-name>``, ``file:/path``, ``random-init``, ``trained-here``, ``none``.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    weights: str = "none"
    input_size: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


def check_images(images: Tensor, argument: str = "images") -> Tensor:
    """Validate an image batch and return it; raise a ValueError naming ``argument`` otherwise."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{argument} must have shape [B, 3, H, W], got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{argument} must be a float tensor with values in [0, 1], got {images.dtype}")
    return images


class Masker(abc.ABC):
    """Produces the binary mask M_B of suspected defects for an image batch.

    Subclasses implement :meth:`score_map` (higher = more suspicious) and either override
    :meth:`mask` or set ``self.threshold`` so that the default ``score_map > threshold`` applies.
    Trained maskers learn in :meth:`fit` from normal images only and calibrate their threshold
    there (a quantile of the normal scores); zero-shot maskers keep the no-op default.
    Fitted state goes through :meth:`state_dict` / :meth:`load_state_dict` so that
    :meth:`save` and :meth:`load` work for every masker.
    """

    threshold: float | None = None
    #: Set by the registry on every masker it creates (the registered name and ``weights=``);
    #: the default :attr:`info` is built from it, so a plugin need not repeat its registration.
    registration: MaskerInfo | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass may write ``fit(self, images)`` (or take only one of seed / progress): it
        # is wrapped here, once, so every caller can keep calling fit(images, seed=, progress=).
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if inspect.isfunction(fit):
            cls.fit = _forgiving_fit(cls, fit)  # type: ignore[method-assign]

    @property
    def info(self) -> MaskerInfo:
        """Name and weights source of this masker.

        Default: the registration (``register(name, factory, weights=...)``), or the class name
        with weights ``unknown`` for a masker built outside the registry.  Override it to report
        what was really loaded (e.g. ``random-init``) or details.
        """
        if self.registration is not None:
            return self.registration
        return MaskerInfo(name=type(self).__name__, weights="unknown")

    def fit(self, images: Tensor, *, seed: int = 0, progress: bool = False) -> "Masker":
        """Learn from the normal training images.  Zero-shot maskers need nothing (the default).

        Args:
            images: **one** ``torch.Tensor`` holding every normal training image (not a loader,
                not a list of batches): shape ``[N, 3, H, W]``, dtype ``float32``, RGB, values in
                ``[0, 1]``, already resized to the run's image size.  fader-kit's pipeline moves
                the masker to its device (:meth:`to`) first and passes the images on that device
                (on the CPU when N > 4096).
            seed: the run's seed, for any randomness of the fit.
            progress: whether to show progress bars.

        Returns:
            ``self``.  Subclasses may accept any subset of ``seed`` / ``progress`` and may return
            None: the class wraps such a ``fit`` so it still answers this signature and returns
            ``self``.  A trained masker should set :attr:`threshold` here when it relies on the
            default :meth:`mask`.
        """
        return self

    @abc.abstractmethod
    def score_map(self, images: Tensor) -> Tensor:
        """Per-pixel suspicion of a batch: higher = more suspicious.

        Args:
            images: ``torch.Tensor`` ``[B, 3, H, W]``, ``float32``, RGB, values in ``[0, 1]``, on
                the masker's device.  The pipeline calls it under ``torch.no_grad()`` in batches
                of the profile's evaluation batch size (the last batch may be smaller).

        Returns:
            ``torch.Tensor`` ``[B, 1, H, W]``, floating point, at the input's resolution ``H x W``,
            on any device (the pipeline moves it to the CPU).  Any scale: only the order matters,
            except against :attr:`threshold` in the default :meth:`mask`.
        """

    def mask(self, images: Tensor) -> Tensor:
        """The binary mask M_B of a batch: True where the masker suspects a defect.

        Args:
            images: as in :meth:`score_map`: ``[B, 3, H, W]`` ``float32`` RGB in ``[0, 1]`` on the
                masker's device.

        Returns:
            ``torch.Tensor`` ``[B, 1, H, W]``, ``bool``, at the input's resolution.  Any other
            shape stops the run with an error naming the masker.  Default:
            ``score_map(images) > self.threshold`` (a RuntimeError when no threshold is set).
        """
        if self.threshold is None:
            raise RuntimeError(
                f"masker {self.info.name!r} has no threshold: call fit() on normal images first"
            )
        return self.score_map(images) > self.threshold

    def to(self, device: str | torch.device) -> "Masker":
        """Move the masker's networks to ``device`` (a ``torch.device`` or a string such as
        ``"cuda:0"``) and return ``self``.  The default moves every ``nn.Module`` attribute; a
        masker holding plain tensors should override it (or move them in :meth:`score_map`)."""
        for value in vars(self).values():
            if isinstance(value, nn.Module):
                value.to(device)
        return self

    def mask_module(self) -> nn.Module | None:
        """The fitted masker as a torch module ``images -> M_B`` that ``torch.onnx.export`` can trace,
        or None (the default) when it cannot be exported: ``fader-kit export --onnx`` of a detector
        folder puts this module inside the graph, so the graph takes images only.  A module that also
        has ``maps(images) -> (score_map, M_B)`` (the built-in ones do) exports the masker alone too
        (:func:`fader_kit.deploy.masker_export.export_masker`)."""
        return None

    def score_module(self) -> nn.Module | None:
        """The fitted masker as a torch module ``images -> score map [B, 1, H, W]`` (float) that
        ``torch.onnx.export`` can trace, or None (the default): the graph of a detector that scores
        with the masker's map (``--score masker`` or ``fused``) holds this module.  The default takes
        the score map from the mask module where that module gives ``maps(images) -> (score map,
        mask)`` (the trained maskers' modules do), else None."""
        module = self.mask_module()
        return _ScoreMapOf(module) if module is not None and hasattr(module, "maps") else None

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Fitted state: every nn.Module attribute plus the threshold."""
        state: dict[str, Any] = {"threshold": self.threshold}
        for key, value in vars(self).items():
            if isinstance(value, nn.Module):
                state[f"module:{key}"] = value.state_dict()
        return state

    def check_state(self, state: dict[str, Any], image_size: int) -> None:
        """Raise ValueError (naming the entry) when ``state`` cannot be this masker's fitted state for
        images of side ``image_size``.  A detector folder's state is read from a file, so the loader
        calls this before :meth:`load_state_dict`; without it a wrong shape shows as a traceback at the
        first prediction.  The default checks the threshold (None or a finite number); a masker whose
        state holds tensors should also check their shapes and dtypes (``patch_stats`` does)."""
        check_threshold(state.get("threshold"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state.get("threshold")
        for key, value in state.items():
            if key.startswith("module:"):
                getattr(self, key.split(":", 1)[1]).load_state_dict(value)

    def save(self, path: str | Path) -> Path:
        from fader_kit.util.files import torch_save_atomic

        return torch_save_atomic({"info": self.info.model_dump(mode="json"), "state": self.state_dict()}, path)

    def load(self, path: str | Path) -> "Masker":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"masker state file not found: {path}")
        from fader_kit.util.safe_load import torch_load_safe

        payload = torch_load_safe(path, "masker state file")
        if not isinstance(payload, dict):
            raise ValueError(f"{path} is not a fader-kit masker state file")
        saved = payload.get("info", {}).get("name")
        if saved != self.info.name:
            raise ValueError(f"{path} holds a {saved!r} masker, not {self.info.name!r}")
        self.load_state_dict(payload["state"])
        return self


def check_threshold(value: Any, name: str = "threshold") -> None:
    """A saved masker threshold: None (unset) or a finite number; a ValueError naming ``name`` otherwise."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"state entry {name} must be a finite number, got {value!r}")


def check_tensor(value: Any, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
    """A saved state tensor of exactly ``shape`` and ``dtype``; a ValueError naming ``name`` otherwise."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"state entry {name} must be a tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"state entry {name} has dtype {value.dtype}, expected {dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"state entry {name} has shape {list(value.shape)}, expected {list(shape)}")


FIT_KEYWORDS = ("seed", "progress")


def keyword_parameters(fn: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """The names ``fn`` (a function or a class) takes as keywords, and whether it also takes
    ``**kwargs`` (a callable without a readable signature is assumed to take anything)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), True
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _forgiving_fit(cls: type, fit: Callable[..., Any]) -> Callable[..., Any]:
    """``fit`` adapted to ``fit(images, *, seed=0, progress=False) -> self`` (see Masker.fit) when
    it takes fewer keywords; a ``fit`` that already takes both is returned unchanged."""
    params = list(inspect.signature(fit).parameters.values())[2:]  # after self, images
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in FIT_KEYWORDS]
    if required:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__}.fit: fader-kit calls fit(images, *, seed=0, progress=False); "
            f"parameter(s) {', '.join(required)} need a default"
        )
    accepted, any_keyword = keyword_parameters(fit)
    if any_keyword or set(FIT_KEYWORDS) <= accepted:
        return fit  # already the full contract (extra keywords of its own stay visible)
    passed = tuple(k for k in FIT_KEYWORDS if k in accepted)

    @functools.wraps(fit)
    def wrapper(self: "Masker", images: Tensor, *, seed: int = 0, progress: bool = False) -> "Masker":
        given = {"seed": seed, "progress": progress}
        result = fit(self, images, **{k: given[k] for k in passed})
        return self if result is None else result

    del wrapper.__wrapped__  # inspect.signature must show the adapted signature
    return wrapper


class Reconstructor(nn.Module, abc.ABC):
    """An encoder-decoder with skip connections that FADeR can gate.

    ``encode`` returns features of depth 1..D, shallow to deep; ``decode`` rebuilds the image
    from them.  ``skip_gates`` (length D-1, each ``[B, 1, h_d, w_d]`` at the resolution of
    ``feats[d]``) multiply the skip connections of depths 1..D-1; the deepest feature is never
    gated because it has no skip connection.
    """

    @abc.abstractmethod
    def encode(self, x: Tensor) -> list[Tensor]:
        ...

    @abc.abstractmethod
    def decode(self, feats: list[Tensor], skip_gates: list[Tensor] | None = None) -> Tensor:
        ...

    @property
    def depth(self) -> int:
        """D, the number of encoder blocks."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The modules that make up ``encode``: FADeR training freezes them (weights *and*
        BatchNorm statistics).  Declared explicitly so that freezing never depends on how a
        custom reconstructor happens to lay out its children."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement encoder_modules() (the modules used by encode) "
            "so that FADeR training can freeze the encoder"
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of :meth:`encoder_modules` (frozen during FADeR training)."""
        return [p for m in self.encoder_modules() for p in m.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters fine-tuned during FADeR training: everything that is not the encoder's."""
        enc = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def forward(self, x: Tensor, skip_gates: list[Tensor] | None = None) -> Tensor:
        return self.decode(self.encode(x), skip_gates)


class _ScoreMapOf(nn.Module):
    """``images -> score map``: the first output of a mask module's ``maps``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: Tensor) -> Tensor:
        return self.module.maps(images)[0]  # type: ignore[operator]
