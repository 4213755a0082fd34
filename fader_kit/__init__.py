"""fader-kit: FADeR (Feature Attenuation of Defective Representation) for reconstruction-by-
inpainting anomaly detection, with maskers as plugins.

The public API is re-exported here and imported on first use (PEP 562), so that
``import fader_kit`` and ``fader-kit --version`` do not pay for torch and every plugin.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fader_kit.version import __version__

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{n: ("model.config", n) for n in ("PROFILES", "FaderConfig", "Profile", "TrainConfig", "UNetConfig", "get_profile")},
    **{n: ("model.fader", n) for n in ("FaderHead", "FaderModel", "FaderOutput", "ViTHead", "ranking_loss", "soft_mask",
                                 "wrap_with_fader")},
    **{n: ("maskers.interfaces", n) for n in ("Masker", "MaskerInfo", "Reconstructor")},
    **{n: ("model.metrics", n) for n in ("aupro", "auroc", "f1_max", "image_auroc", "pixel_auroc")},
    **{n: ("model.obfuscation", n) for n in ("mosaic", "obfuscate")},
    **{n: ("maskers.registry", n) for n in ("MaskerRegistry", "create_masker", "list_maskers", "plugin_errors")},
    **{n: ("model.scoring", n) for n in ("image_score", "mean_smooth", "msgms_map")},
    **{n: ("model.training", n) for n in ("train_fader", "train_reconstructor")},
    "EARUNet": ("model.unet", "EARUNet"),
    **{n: ("model.variants", n) for n in ("HeadVariant", "get_variant", "list_variants")},
    "resolve_variant": ("model.variants", "resolve"),
    **{n: ("errors", n) for n in ("UserError", "ConfigError")},
    **{n: ("deploy.detector", n) for n in ("Detector", "Prediction")},
    "Calibration": ("deploy.thresholds", "Calibration"),
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fader_kit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from fader_kit.deploy.thresholds import Calibration
    from fader_kit.model.config import PROFILES, FaderConfig, Profile, TrainConfig, UNetConfig, get_profile
    from fader_kit.deploy.detector import Detector, Prediction
    from fader_kit.errors import ConfigError, UserError
    from fader_kit.model.fader import FaderHead, FaderModel, FaderOutput, ViTHead, ranking_loss, soft_mask, wrap_with_fader
    from fader_kit.maskers.interfaces import Masker, MaskerInfo, Reconstructor
    from fader_kit.model.metrics import aupro, auroc, f1_max, image_auroc, pixel_auroc
    from fader_kit.model.obfuscation import mosaic, obfuscate
    from fader_kit.maskers.registry import MaskerRegistry, create_masker, list_maskers, plugin_errors
    from fader_kit.model.scoring import image_score, mean_smooth, msgms_map
    from fader_kit.model.training import train_fader, train_reconstructor
    from fader_kit.model.unet import EARUNet
    from fader_kit.model.variants import HeadVariant, get_variant, list_variants
    from fader_kit.model.variants import resolve as resolve_variant
