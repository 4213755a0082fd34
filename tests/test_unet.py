import pytest
import torch

from fader_kit.model.config import UNetConfig
from fader_kit.model.unet import EARUNet

CFG = UNetConfig(widths=(4, 8, 8, 8, 8))


def _model() -> EARUNet:
    # train mode: batch statistics keep activations O(1) in a fresh network (eval-mode BN with
    # untouched running stats shrinks deep features towards zero and hides the skip effect)
    torch.manual_seed(0)
    return EARUNet(CFG).train()


def test_encoder_resolutions_and_output_range():
    model = _model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.encode(x)
        out = model.decode(feats)
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert [f.shape[1] for f in feats] == list(CFG.widths)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert model.skip_shapes((64, 64)) == [(32, 32), (16, 16), (8, 8), (4, 4)]


@torch.no_grad()
def test_gates_reach_exactly_the_skips_of_depths_1_to_D_minus_1():
    model = _model()
    feats = model.encode(torch.rand(2, 3, 64, 64))
    ones = [torch.ones(2, 1, *f.shape[-2:]) for f in feats[:-1]]
    # a gate of ones changes nothing
    assert torch.allclose(model.decode(feats, ones), model.decode(feats))
    for k in range(len(feats) - 1):
        gates = [g.clone() for g in ones]
        gates[k].zero_()
        zeroed = [f.clone() for f in feats]
        zeroed[k].zero_()
        # gating depth k == removing feature k from the skip, nothing else
        assert torch.allclose(model.decode(feats, gates), model.decode(zeroed), atol=1e-6)
        assert not torch.allclose(model.decode(feats, gates), model.decode(feats), atol=1e-6)
    # all gates at zero still leave the deepest feature (no skip there) in charge
    zero_gates = [torch.zeros_like(g) for g in ones]
    deep_only = [torch.zeros_like(f) for f in feats[:-1]] + [feats[-1]]
    assert torch.allclose(model.decode(feats, zero_gates), model.decode(deep_only), atol=1e-6)
    no_deep = feats[:-1] + [torch.zeros_like(feats[-1])]
    assert not torch.allclose(model.decode(feats, zero_gates), model.decode(no_deep, zero_gates), atol=1e-6)


def test_bad_sizes_and_gate_counts_are_reported():
    model = _model()
    with pytest.raises(ValueError, match="divisible by 32"):
        model.encode(torch.rand(1, 3, 48, 40))
    feats = model.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="D-1 = 4 gates"):
        model.decode(feats, [torch.ones(1, 1, 32, 32)])
