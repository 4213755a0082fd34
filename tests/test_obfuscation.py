import pytest
import torch

from fader_kit.model.obfuscation import mosaic, obfuscate


def _tiny() -> torch.Tensor:
    # one image, 3 channels, 2 x 4 pixels; channel c holds base values + c
    base = torch.tensor([[0.0, 0.2, 0.4, 0.6], [0.2, 0.4, 0.6, 0.8]])
    return torch.stack([base, base + 0.1, base * 0.5]).unsqueeze(0)


def test_mosaic_is_block_average_repeated():
    out = mosaic(_tiny(), 2)
    # channel 0: left block mean (0+.2+.2+.4)/4 = .2, right block (.4+.6+.6+.8)/4 = .6
    expected0 = torch.tensor([[0.2, 0.2, 0.6, 0.6], [0.2, 0.2, 0.6, 0.6]])
    assert torch.allclose(out[0, 0], expected0)
    assert torch.allclose(out[0, 1], expected0 + 0.1)
    assert torch.allclose(out[0, 2], expected0 * 0.5)


def test_mosaic_scale_one_is_identity_and_bad_scale_raises():
    x = _tiny()
    assert torch.equal(mosaic(x, 1), x)
    with pytest.raises(ValueError, match="not divisible"):
        mosaic(x, 3)


def test_obfuscate_replaces_only_masked_pixels():
    x = _tiny()
    mask = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    mask[0, 0, 0, 2] = True  # pixel value 0.4, its block mean is 0.6
    out = obfuscate(x, mask, 2)
    assert torch.isclose(out[0, 0, 0, 2], torch.tensor(0.6))  # the right block average
    assert torch.isclose(out[0, 2, 0, 2], torch.tensor(0.3))  # 0.6 * 0.5
    unmasked = ~mask.expand_as(x)
    assert torch.equal(out[unmasked], x[unmasked])


def test_obfuscate_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask must have shape"):
        obfuscate(_tiny(), torch.zeros(1, 1, 4, 4, dtype=torch.bool), 2)
