"""fader-kit: FADeR (Feature Attenuation of Defective Representation) for reconstruction-by-
inpainting anomaly detection, with maskers as plugins.

The public API is re-exported here; see DESIGN notes in README.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .calibration import Calibration
from .config import PROFILES, FaderConfig, Profile, TrainConfig, UNetConfig, get_profile
from .detector import Detector, Prediction
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

__all__ = [
    "PROFILES", "Calibration", "Detector", "EARUNet", "FaderConfig", "FaderHead", "FaderModel", "FaderOutput",
    "HeadVariant", "Masker", "MaskerInfo", "MaskerRegistry", "Prediction", "Profile", "Reconstructor", "TrainConfig",
    "UNetConfig", "ViTHead", "__version__", "aupro", "auroc", "create_masker", "f1_max", "get_profile", "get_variant",
    "image_auroc", "image_score", "list_maskers", "list_variants", "mean_smooth", "mosaic", "msgms_map", "obfuscate",
    "pixel_auroc", "plugin_errors", "ranking_loss", "resolve_variant", "soft_mask", "train_fader",
    "train_reconstructor", "wrap_with_fader",
]
