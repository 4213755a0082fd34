"""What the trained maskers (dsr, msflow, ami_net) share: one copy of the logic that is the same.

- :class:`TrainedMaskerConfig`: the options every trained masker has (working resolution, epochs,
  batch size, learning rate, threshold quantile).
- :class:`TrainedMasker`: fit on normal images only (seeded, RNG state restored afterwards),
  score maps at the input's resolution, the threshold as a quantile of the normal scores
  computed at fit time (on a held-out share of the normal images: scores of the images a model
  was trained on are biased low), and save/load of the fitted state through ``state_dict``.
- small helpers: batching with an optional progress bar, resizing, Gaussian smoothing,
  the quantile.

A subclass implements ``_build`` (create its trainable modules), ``_train`` (the training loop)
and ``_score`` (score maps at the working resolution).
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from fader_kit.data import DataError
from fader_kit.errors import ConfigError
from fader_kit.util.quantiles import quantiles
from fader_kit.maskers.interfaces import Masker, MaskerInfo, check_images
from fader_kit.maskers.registry import masker_config

C = TypeVar("C", bound="TrainedMaskerConfig")


class TrainedMaskerConfig(BaseModel):
    """Options common to the trained maskers; subclasses add their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int | None = Field(
        None, ge=16, description="working resolution (square); None = the size of the images given to fit()"
    )
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    threshold_quantile: float = Field(
        0.99, gt=0, lt=1, description="mask threshold = this quantile of the pixel scores of the normal fit images"
    )
    calibration_fraction: float = Field(
        0.2, ge=0, lt=1,
        description="share of the fit images held out of training to set the threshold (scores of "
        "training images are biased low); 0 = calibrate on the training images",
    )
    eval_batch_size: int = Field(16, ge=1)


class BackboneOptions(BaseModel):
    """Mixin: a timm backbone and where its weights come from (fader_kit.maskers.backbones rules)."""

    backbone: str = Field("tf_efficientnet_lite0", description="timm model name of the frozen feature extractor")
    weights: str | None = Field(None, description="checkpoint file/folder for the backbone; None = package/hub")
    allow_random_weights: bool = False

    @field_validator("weights", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return None if v is None else str(v)


def parse_config(cls: type[C], masker: str, options: dict[str, Any]) -> C:
    """Build ``cls`` from factory options: one :class:`~fader_kit.maskers.registry.MaskerOptionError` naming
    the masker, the option and the accepted ones (the registry's rule for every masker)."""
    return masker_config(cls, masker, options)


def trained_factory(masker_cls: type, config_cls: type[C], name: str) -> Callable[..., Any]:
    """The registered factory of a trained masker: every option is a field of ``config_cls`` (the
    backbone's ``weights`` / ``allow_random_weights`` included; anything else is one
    MaskerOptionError), and ``device`` says where it runs."""

    def factory(device: str | None = None, **options: Any) -> Any:
        return masker_cls(parse_config(config_cls, name, options), device)

    factory.__name__ = factory.__qualname__ = f"create_{name}"
    factory.__doc__ = f"Factory registered as ``{name}``: options are the fields of {config_cls.__name__}."
    return factory


# -- helpers --------------------------------------------------------------------------------
def batches(n: int, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Tensor]:
    """Index batches over ``range(n)``: shuffled when a generator is given, else in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if (drop_last and n >= batch_size) else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar when ``enabled`` (to stderr), otherwise a no-op object with the same calls."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (antialiased when shrinking); a no-op at the same size."""
    if (int(images.shape[-2]), int(images.shape[-1])) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``[B, C, H, W]`` maps (reflect padding, radius 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(round(4 * sigma)))
    radius = min(radius, int(maps.shape[-1]) - 1, int(maps.shape[-2]) - 1)  # ints: fixed in a traced graph
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = int(maps.shape[1])
    out = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def calibration_split(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices (train, calibration): ``fraction`` of ``n`` held out when both parts keep >= 2 images;
    otherwise every image trains and calibrates."""
    n_cal = int(n * fraction)
    if n_cal < 2 or n - n_cal < 2:
        every = torch.arange(n)
        return every, every
    order = torch.randperm(n, generator=generator)
    return order[n_cal:].sort().values, order[:n_cal].sort().values


def quantile_threshold(maps: Tensor, q: float) -> float:
    """The ``q`` quantile of all values in ``maps`` (every value: a partition has no size limit)."""
    return quantiles(maps.double(), [q], what="threshold of the normal scores")[0]


# -- the base class -------------------------------------------------------------------------
class TrainedMasker(Masker, abc.ABC):
    """A masker trained on normal images; see the module docstring for the subclass contract."""

    name: ClassVar[str]
    config: TrainedMaskerConfig

    def __init__(self, config: TrainedMaskerConfig, device: str | torch.device | None = None) -> None:
        self.config = config
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.threshold: float | None = None
        self.work_size: tuple[int, int] | None = None
        self._build()
        self.to(self._device)

    # -- subclass hooks -------------------------------------------------------------------
    @abc.abstractmethod
    def _build(self) -> None:
        """Create the trainable modules (fresh initialisation, global RNG seeded by the caller)."""

    @abc.abstractmethod
    def _train(self, images: Tensor, generator: torch.Generator, progress: bool) -> None:
        """Train on normal ``images`` (CPU tensor, already at ``self.work_size``)."""

    @abc.abstractmethod
    def _score(self, images: Tensor) -> Tensor:
        """Score maps ``[B, 1, h, w]`` (any h, w) for a batch on ``self.device`` at the working size."""

    def _trainable(self) -> dict[str, nn.Module]:
        """Modules whose state is saved; the default is every nn.Module attribute but ``backbone``
        (a frozen pretrained extractor is rebuilt from the config) unless it is random-init."""
        keep_backbone = getattr(self, "weights_source", "") == "random-init"
        return {
            k: v for k, v in vars(self).items()
            if isinstance(v, nn.Module) and (k != "backbone" or keep_backbone)
        }

    def _extra_state(self) -> dict[str, Any]:
        """Non-module fitted state (tensors, numbers) to save; subclasses extend."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    # -- Masker API -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> "TrainedMasker":
        self._device = torch.device(device)
        super().to(self._device)
        return self

    @property
    def fitted(self) -> bool:
        return self.work_size is not None

    def _info(self, weights: str, **details: Any) -> MaskerInfo:
        size = self.work_size[0] if self.work_size else self.config.image_size
        return MaskerInfo(
            name=self.name,
            weights=weights,
            input_size=size,
            details={"threshold_quantile": self.config.threshold_quantile, **details},
        )

    def fit(self, images: Tensor, *, seed: int = 0, progress: bool = False) -> "TrainedMasker":
        """Train on normal images ``[N, 3, H, W]`` and calibrate the mask threshold on them."""
        images = check_images(images, "images")
        if images.shape[0] < 2:
            raise DataError(f"{self.name}.fit needs at least 2 normal images, got {images.shape[0]}")
        size = self.config.image_size
        work = (size, size) if size is not None else (int(images.shape[-2]), int(images.shape[-1]))
        self._check_work_size(work)
        cuda = [self._device.index or 0] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            self._build()
            self.to(self._device)
            generator = torch.Generator().manual_seed(seed)
            train_idx, cal_idx = calibration_split(images.shape[0], self.config.calibration_fraction, generator)
            train_images = resize(images[train_idx].detach().float().cpu(), work).clamp(0, 1)
            self.work_size = work
            try:
                self._train(train_images, generator, progress)
                normal = self.score_map(images[cal_idx])
                self.threshold = quantile_threshold(normal, self.config.threshold_quantile)
            except BaseException:
                self.work_size = None
                self.threshold = None
                raise
        return self

    def _check_work_size(self, size: tuple[int, int]) -> None:
        """Raise ValueError when the model cannot work at ``size`` (subclasses override)."""

    @torch.no_grad()
    def _map_over_batches(
        self, images: Tensor, fn: Callable[[Tensor], dict[str, Tensor]], mode: str = "bilinear"
    ) -> dict[str, Tensor]:
        """``fn`` on batches resized to the work size, in eval mode; its maps ``[B, 1, h, w]`` are
        resized back to the input size (``mode``: bilinear, or nearest for masks) and joined."""
        images = check_images(images, "images")
        if not self.fitted:
            raise RuntimeError(f"masker {self.name!r} is not fitted: call fit() on normal images or load()")
        out_size = (int(images.shape[-2]), int(images.shape[-1]))
        for module in self._trainable().values():
            module.eval()
        maps: dict[str, list[Tensor]] = {}
        for idx in batches(images.shape[0], self.config.eval_batch_size):
            batch = resize(images[idx].float().to(self._device), self.work_size)
            for name, m in fn(batch).items():
                maps.setdefault(name, []).append(resize_back(m.float(), out_size, mode).cpu())
        return {name: torch.cat(parts) for name, parts in maps.items()}

    def score_map(self, images: Tensor) -> Tensor:
        return self._map_over_batches(images, lambda batch: {"score": self._score(batch)})["score"]

    def _scorer(self) -> nn.Module | None:
        """The inference path as one module over a batch at the work size, ``-> (score [B, 1, h, w],
        mask [B, 1, h', w'] bool or None)`` (None: the mask is ``score_map > threshold``), built of
        ops that trace to ONNX; None (the default) when the masker cannot be exported."""
        return None

    def mask_module(self) -> "TrainedMaskModule | None":
        """The fitted masker as a traceable module: :meth:`score_map` and :meth:`mask` of a batch
        (``maps``; ``forward`` gives the mask), its modules and threshold inside."""
        scorer = self._scorer()
        if scorer is None:
            return None
        if not self.fitted or self.threshold is None:
            raise RuntimeError(f"masker {self.name!r} is not fitted: call fit() on normal images or load()")
        return TrainedMaskModule(scorer, self.work_size, self.threshold).eval()

    def diagnostic_maps(self, images: Tensor) -> dict[str, Tensor]:
        """The model's intermediate maps (``_diagnostics``), each ``[B, 1, H, W]`` at the input size:
        which stage of a masker localises a defect, and which loses it.  ``{}`` when it has none."""
        return self._map_over_batches(images, self._diagnostics)

    def _diagnostics(self, images: Tensor) -> dict[str, Tensor]:
        """Named intermediate maps of a batch at the work size (subclasses override)."""
        return {}

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError(f"masker {self.name!r} is not fitted: nothing to save")
        return {
            "threshold": self.threshold,
            "work_size": list(self.work_size),
            "config": self.config.model_dump(mode="json"),
            "modules": {k: v.state_dict() for k, v in self._trainable().items()},
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # an option added after the state was saved reads as its default (new options keep the
        # earlier behaviour at their default, so an older fitted masker still loads)
        defaults = type(self.config).model_construct().model_dump(mode="json")
        saved = {**defaults, **state.get("config", {})}
        mine = self.config.model_dump(mode="json")
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k) and k != "eval_batch_size")
        if differ:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs {mine.get(k)!r}" for k in differ)
            raise ConfigError(f"saved {self.name!r} state was fitted with other options ({detail}); "
                             f"create the masker with the saved options")
        modules = self._trainable()
        missing = sorted(set(state["modules"]) ^ set(modules))
        if missing:
            raise ConfigError(f"saved {self.name!r} state does not match this masker's modules: {missing}")
        for key, module_state in state["modules"].items():
            modules[key].load_state_dict(module_state)
        self._load_extra_state(state.get("extra", {}))
        self.threshold = state["threshold"]
        self.work_size = tuple(state["work_size"])
        self.to(self._device)


class TrainedMaskModule(nn.Module):
    """``images [B, 3, H, W] -> M_B [B, 1, H, W] bool`` with ``maps(images) -> (score_map, M_B)``: what
    :meth:`TrainedMasker.score_map` and :meth:`TrainedMasker.mask` compute, in one traceable module
    (resize to the work size, the masker's scorer, resize back: bilinear for the score, nearest for
    a token mask; else the score above the fitted threshold)."""

    def __init__(self, scorer: nn.Module, work_size: tuple[int, int], threshold: float) -> None:
        super().__init__()
        self.scorer = scorer
        self.work_size = (int(work_size[0]), int(work_size[1]))
        self.threshold = float(threshold)

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if torch.jit.is_tracing() and (self.work_size[0] < size[0] or self.work_size[1] < size[1]):
            raise ConfigError(f"the masker works at {self.work_size} px and the images are {size} px: its antialiased "
                              "downscaling does not export to ONNX; fit it at the images' size (image_size unset)")
        score, mask = self.scorer(resize(images.float(), self.work_size))
        score = resize_back(score.float(), size, "bilinear")
        if mask is None:
            return score, score > self.threshold
        return score, resize_back(mask.float(), size, "nearest").bool()

    def forward(self, images: Tensor) -> Tensor:
        return self.maps(images)[1]


def resize_back(maps: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Maps at the work size back to the input's ``size`` (as :meth:`TrainedMasker._map_over_batches`)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode=mode, align_corners=False if mode == "bilinear" else None)
