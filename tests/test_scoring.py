import math

import torch

from fader_kit.model.scoring import GMS_C, image_score, mean_smooth, msgms_map


def test_msgms_of_identical_images_is_zero():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(msgms_map(x, x), torch.zeros(2, 1, 32, 32), atol=1e-6)


def test_single_scale_gms_matches_hand_computation():
    # a: zeros; b: a single bright pixel in the centre of a 3x3 image (one channel repeated).
    a = torch.zeros(1, 3, 3, 3)
    b = torch.zeros(1, 3, 3, 3)
    b[..., 1, 1] = 1.0
    out = msgms_map(a, b, scales=1)[0, 0]
    # centre: Prewitt/3 sees the pixel only in its zero-weight column/row -> both gradients 0 -> GMS 1
    assert math.isclose(float(out[1, 1]), 0.0, abs_tol=1e-6)
    # left-middle: gx = -1/3, gy = 0 -> g_b^2 = 1/9, g_a = 0 -> 1 - c / (1/9 + c)
    assert math.isclose(float(out[1, 0]), 1 - GMS_C / (1 / 9 + GMS_C), rel_tol=1e-4)
    # corner: gx = gy = -1/3 -> g_b^2 = 2/9
    assert math.isclose(float(out[0, 0]), 1 - GMS_C / (2 / 9 + GMS_C), rel_tol=1e-4)


def test_multiscale_map_is_mean_over_scales():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    one, three = msgms_map(a, b, scales=1), msgms_map(a, b, scales=3)
    assert one.shape == three.shape == (1, 1, 16, 16)
    assert not torch.allclose(one, three)
    assert float(three.min()) >= 0.0 and float(three.max()) <= 1.0


def test_mean_smooth_and_image_score():
    maps = torch.zeros(2, 1, 21, 21)
    maps[1, 0, 10, 10] = 441.0
    smooth = mean_smooth(maps, 21)
    assert math.isclose(float(smooth[1, 0, 10, 10]), 1.0, rel_tol=1e-5)  # 441 / (21*21)
    assert torch.equal(image_score(maps), torch.tensor([0.0, 441.0]))


def test_gradient_magnitude_equals_the_prewitt_convolution():
    import torch.nn.functional as F

    from fader_kit.model.scoring import _prewitt, gradient_magnitude

    x = torch.rand(2, 3, 9, 12, generator=torch.Generator().manual_seed(2))
    g = F.conv2d(x.reshape(6, 1, 9, 12), _prewitt(x.device, x.dtype), padding=1)
    reference = torch.sqrt((g**2).sum(dim=1) + 1e-12).reshape(2, 3, 9, 12)
    assert torch.allclose(gradient_magnitude(x), reference, atol=1e-6)


def test_mean_smooth_equals_the_mean_pool_it_replaces():
    import torch.nn.functional as F

    maps = torch.rand(2, 1, 30, 25, generator=torch.Generator().manual_seed(3))
    for k in (3, 21):
        padded = F.pad(maps, (k // 2,) * 4, mode="replicate")
        reference = F.avg_pool2d(padded, k, stride=1)
        out = mean_smooth(maps, k)
        assert out.dtype == maps.dtype and out.shape == maps.shape
        assert torch.allclose(out, reference, atol=1e-6)
