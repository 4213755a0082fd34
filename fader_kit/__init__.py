"""fader-kit: FADeR (Feature Attenuation of Defective Representation) for reconstruction-by-
inpainting anomaly detection, with maskers as plugins.

The public API is re-exported here and imported on first use (PEP 562), so that
``import fader_kit`` and ``fader-kit --version`` do not pay for torch and every plugin.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{n: ("config", n) for n in ("PROFILES", "FaderConfig", "Profile", "TrainConfig", "UNetConfig", "get_profile")},
    **{n: ("fader", n) for n in ("FaderHead", "FaderModel", "FaderOutput", "ViTHead", "ranking_loss", "soft_mask",
                                 "wrap_with_fader")},
    **{n: ("interfaces", n) for n in ("Masker", "MaskerInfo", "Reconstructor")},
    **{n: ("metrics", n) for n in ("aupro", "auroc", "f1_max", "image_auroc", "pixel_auroc")},
    **{n: ("obfuscation", n) for n in ("mosaic", "obfuscate")},
    **{n: ("registry", n) for n in ("MaskerRegistry", "create_masker", "list_maskers", "plugin_errors")},
    **{n: ("scoring", n) for n in ("image_score", "mean_smooth", "msgms_map")},
    **{n: ("training", n) for n in ("train_fader", "train_reconstructor")},
    "EARUNet": ("unet", "EARUNet"),
    **{n: ("variants", n) for n in ("HeadVariant", "get_variant", "list_variants")},
    "resolve_variant": ("variants", "resolve"),
    **{n: ("errors", n) for n in ("UserError", "ConfigError")},
    **{n: ("detector", n) for n in ("Detector", "Prediction")},
    "Calibration": ("calibration", "Calibration"),
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
    from .calibration import Calibration
    from .config import PROFILES, FaderConfig, Profile, TrainConfig, UNetConfig, get_profile
    from .detector import Detector, Prediction
    from .errors import ConfigError, UserError
    from .fader import FaderHead, FaderModel, FaderOutput, ViTHead, ranking_loss, soft_mask, wrap_with_fader
    from .interfaces import Masker, MaskerInfo, Reconstructor
    from .metrics import aupro, auroc, f1_max, image_auroc, pixel_auroc
    from .obfuscation import mosaic, obfuscate
    from .registry import MaskerRegistry, create_masker, list_maskers, plugin_errors
    from .scoring import image_score, mean_smooth, msgms_map
    from .training import train_fader, train_reconstructor
    from .unet import EARUNet
    from .variants import HeadVariant, get_variant, list_variants
    from .variants import resolve as resolve_variant
