"""Loading a model, masker or weights file never runs code: a crafted pickle is refused with a
clear error, and the command it carries does not run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fader_kit.errors import UnsafeFileError, UserError
from fader_kit.model.fader import FaderModel
from fader_kit.maskers.registry import default_registry
from fader_kit.maskers.weights import read_checkpoint


class Payload:
    """Unpickling this creates ``marker``: what a malicious file would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def crafted(path: Path, marker: Path, **fields) -> Path:
    torch.save({**fields, "evil": Payload(marker)}, path)
    return path


def test_crafted_fader_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "fader.pt", marker, format="fader-kit/fader-model/1")
    with pytest.raises(UnsafeFileError, match="fader.pt.*could run code"):
        FaderModel.load(path)
    assert not marker.exists()


def test_crafted_masker_state_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "masker.pt", marker, info={"name": "patch_stats"})
    masker = default_registry().create("patch_stats")
    with pytest.raises(UnsafeFileError, match="masker state file"):
        masker.load(path)
    assert not marker.exists()


def test_crafted_weights_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "weights.pth", marker)
    with pytest.raises(UserError, match="could run code"):
        read_checkpoint(path)
    assert not marker.exists()


def test_saved_models_and_maskers_load_weights_only(tmp_path: Path) -> None:
    """What fader-kit itself saves stays loadable with weights_only=True."""
    from fader_kit import EARUNet, get_profile, wrap_with_fader

    prof = get_profile("smoke")
    model = wrap_with_fader(EARUNet(prof.unet), None, prof.fader_head)
    FaderModel.load(model.save(tmp_path / "fader.pt"))
    masker = default_registry().create("patch_stats")
    masker.fit(torch.rand(6, 3, 32, 32))
    again = default_registry().create("patch_stats").load(masker.save(tmp_path / "m.pt"))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.mask(x), masker.mask(x))
