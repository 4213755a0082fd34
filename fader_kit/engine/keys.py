"""Cache keys: a key holds exactly the settings that change the artifact it names.

- **data key**: the data spec; for synthetic data, the generator's settings and its data seed.
- **masks key** (a fitted masker and its masks): the mask source (masker name and the options
  that change what it computes), data, category, image size, seed.
- **EAR key** (a trained U-Net): data, category, image size, the U-Net's configuration, EAR's
  training settings, the mosaic scale m, seed -- and the masks key when the U-Net learns from a
  masker's masks instead of random blobs only.
- **work key** (one evaluated model, one results row): EAR key, masks key, seed, image size, and
  for a FADeR model the head's configuration and FADeR's training settings.  Plain EAR has no head,
  so neither enters its key.

Each configuration contributes only the fields that apply to it (``key_payload`` on the
configuration models): changing ``vit_dim`` of an MLP head, or FADeR's ``ranking_pairs``, reuses
the EAR U-Net and the MLP head.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from fader_kit.model.config import FaderConfig, Profile, TrainConfig
from fader_kit.data import SyntheticConfig
from fader_kit.model.fusion_rules import Fused, fusion_rule

# Options that choose *where* a masker runs, not what it computes: left out of its key.
NON_SEMANTIC_OPTIONS = frozenset({"device", "progress"})


def digest(payload: Any) -> str:
    """Short stable hash of a JSON-serialisable payload (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_key(data: str, synthetic: SyntheticConfig | None = None, data_seed: int = 0) -> str:
    """The data source as it enters keys.  Synthetic data depends on its generator settings and on
    the data seed; a folder of real images on neither."""
    if not str(data).startswith("synthetic"):
        return str(data)
    gen = synthetic.model_dump(mode="json") if synthetic is not None else None
    return f"{data}#{digest({'generator': gen, 'data_seed': data_seed})}"


def masker_key(name: str, options: dict[str, Any], data: str, category: str, image_size: int, seed: int) -> str:
    """Key of a fitted masker and of its masks."""
    opts = {k: v for k, v in options.items() if k not in NON_SEMANTIC_OPTIONS}
    return digest({"masker": name, "options": opts, "data": data, "category": category,
                   "image_size": image_size, "seed": seed})


def ear_key(data: str, category: str, profile: Profile, seed: int, masks_from: str | None = None) -> str:
    """Key of the EAR U-Net (see the module docstring)."""
    return digest({
        "data": str(data), "category": category, "image_size": profile.image_size,
        "unet": profile.unet.key_payload(), "ear": profile.ear.key_payload("ear"), "m": profile.fader_head.patch_size,
        "seed": seed, "masks_from": masks_from,
    })


def work_key(*, ear: str, masker: str, fader: FaderConfig | None, profile: Profile, seed: int,
             train: TrainConfig | None = None, fused: Fused = False) -> str:
    """Everything one results row depends on (plain EAR: no head, so no head settings)."""
    payload: dict[str, Any] = {
        "ear": ear, "masker": masker, "seed": seed, "image_size": profile.image_size,
        "fader": fader.key_payload() if fader is not None else None,
        "fader_train": (train or profile.fader).key_payload("fader") if fader is not None else None,
    }
    rule = fusion_rule(fused)
    if rule is not None:  # a row that also scores the fused map is a different row (it carries more)
        payload["fused"] = True if rule == "sum" else rule  # the sum rule keeps the keys it had before the others
    return digest(payload)


def fused_key(work_key: str) -> str:
    """Key of the fused score's detail (:mod:`fader_kit.model.fusion`) of the row ``work_key``."""
    return f"{work_key}.fused"


def alone_key(masker_key: str) -> str:
    """Key of the score detail of the masker alone (its own score map as the detector)."""
    return f"{masker_key}.alone"


def safe_name(name: str) -> str:
    """A name as a file-name part (third-party masker names may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
