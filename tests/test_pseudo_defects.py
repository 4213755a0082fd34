"""Pseudo-defect generators: local, non-empty, shape- and dtype-keeping, seeded, cutpaste foreign."""
from __future__ import annotations

import pytest
import torch

from fader_kit.errors import ConfigError
from fader_kit.data.pseudo_defects import DEFAULT_KINDS, HEAD_SOURCE_KINDS, KINDS, cutpaste, make_defects, perlin_noise


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    """Textured images that differ from each other (so a pasted patch is visibly foreign)."""
    g = torch.Generator().manual_seed(5)
    base = torch.rand(n, 3, size, size, generator=g) * 0.5
    return (base + torch.linspace(0, 0.4, n).view(n, 1, 1, 1)).clamp(0, 1)


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_generator_changes_only_inside_a_non_empty_mask(kind: str) -> None:
    x = _images()
    out, masks = make_defects(kind, x, seed=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert masks.shape == (3, 1, 32, 32) and masks.dtype == torch.bool
    assert masks.flatten(1).any(1).all()  # every image has a defect
    changed = (out != x).any(1, keepdim=True)
    assert not (changed & ~masks).any()  # nothing leaks outside the mask
    assert changed.any()  # and something did change
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_same_seed_same_defects_other_seed_other(kind: str) -> None:
    x = _images()
    a, ma = make_defects(kind, x, seed=7)
    b, mb = make_defects(kind, x, seed=7)
    c, mc = make_defects(kind, x, seed=8)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert not torch.equal(ma, mc)


def test_size_grows_the_defect() -> None:
    x = _images(4, 64)
    for kind in DEFAULT_KINDS:
        small = make_defects(kind, x, seed=1, size=0.05)[1].sum()
        large = make_defects(kind, x, seed=1, size=0.4)[1].sum()
        assert large > small, kind


def test_cutpaste_takes_its_content_from_another_image() -> None:
    # image 0 is all zeros, image 1 all ones: image 0's pasted pixels are ones, image 1's zeros
    x = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
    out, masks = cutpaste(x, torch.Generator().manual_seed(0))
    assert torch.all(out[0][masks[0].expand(3, -1, -1)] == 1.0)
    assert torch.all(out[1][masks[1].expand(3, -1, -1)] == 0.0)


def test_perlin_noise_is_smooth_and_bounded() -> None:
    n = perlin_noise(64, 64, 4, torch.Generator().manual_seed(0))
    assert n.shape == (64, 64) and float(n.abs().max()) <= 1.5
    assert float((n[1:] - n[:-1]).abs().max()) < 0.3  # neighbours are close: a smooth field


def test_unknown_kind_and_bad_size_are_named() -> None:
    with pytest.raises(ConfigError, match="kind"):
        make_defects("stain", _images(), seed=0)
    with pytest.raises(ConfigError, match="size"):
        make_defects("blob", _images(), seed=0, size=0.0)


def test_head_sources_map_to_registered_kinds() -> None:
    for kinds in HEAD_SOURCE_KINDS.values():
        assert set(kinds) <= set(KINDS)
    assert "cutpaste" in HEAD_SOURCE_KINDS["image"]  # a head trained on pasted squares is not judged on them
