"""The fused score (fader_kit.model.fusion): each map on its normal-image scale, then added."""
import pytest
import torch

from fader_kit.model.fusion import MapScale, fit_fusion, fuse_maps
from fader_kit.model.metrics import image_auroc


def test_map_scale_puts_the_normal_median_at_0_and_the_quantile_at_1():
    normal = torch.arange(101, dtype=torch.float32).reshape(1, 1, 1, 101)  # 0..100
    scale = MapScale.fit(normal, quantile=0.9)
    assert scale.centre == pytest.approx(50.0) and scale.scale == pytest.approx(40.0)  # q90 = 90
    assert scale.apply(torch.tensor([50.0, 90.0, 130.0])).tolist() == pytest.approx([0.0, 1.0, 2.0])


def test_a_constant_normal_map_gets_a_positive_scale_and_bad_maps_are_refused():
    assert MapScale.fit(torch.full((2, 1, 4, 4), 3.0)).scale > 0
    with pytest.raises(ValueError, match="NaN"):
        MapScale.fit(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="same shape"):
        fuse_maps(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), fit_fusion(torch.rand(9), torch.rand(9)))


def test_fusion_puts_maps_of_different_units_on_one_scale():
    """Two detectors that each see half of the anomalies, one in units 1000x the other's: the fused
    score finds every anomaly, while a plain sum is the large-unit map alone."""
    g = torch.Generator().manual_seed(0)
    n = 40
    recon = torch.rand(n, 1, 8, 8, generator=g) * 0.1          # MSGMS-like units
    masker = torch.rand(n, 1, 8, 8, generator=g) * 100.0       # likelihood-like units
    labels = torch.zeros(n, dtype=torch.long)
    labels[20:] = 1
    recon[20:30, :, 2, 2] += 0.5      # anomalies 20..29 seen by the reconstruction only
    masker[30:40, :, 5, 5] += 500.0   # anomalies 30..39 seen by the masker only
    normal_r, normal_m = recon[:20], masker[:20]
    fused = fuse_maps(recon, masker, fit_fusion(normal_r, normal_m))
    max_score = lambda maps: maps.flatten(1).amax(1)  # noqa: E731
    assert image_auroc(max_score(fused), labels) == pytest.approx(1.0)
    assert image_auroc(max_score(recon), labels) < 0.9 and image_auroc(max_score(masker), labels) < 0.9
    assert image_auroc(max_score(recon + masker), labels) < 0.9


def test_fusion_rules_max_and_select():
    import torch

    from fader_kit.model.fusion import fit_fusion, fuse_maps

    g = torch.Generator().manual_seed(0)
    quiet = torch.rand(8, 1, 16, 16, generator=g)           # normal images: no spikes
    spiky = torch.rand(8, 1, 16, 16, generator=g)
    spiky[:, 0, 3, 3] = 20.0                                  # every normal image has a hot pixel
    s = fit_fusion(quiet, spiky, rule="select")
    assert s.rule == "weighted" and s.weight == 1.0           # the spiky map is left out
    s = fit_fusion(spiky, quiet, rule="select")
    assert s.weight == 0.0
    m = fit_fusion(quiet, quiet, rule="max")
    fused = fuse_maps(quiet, quiet, m)
    assert torch.allclose(fused, m.reconstruction.apply(quiet))
    assert fit_fusion(quiet, quiet).rule == "sum"


def test_pseudo_rule_picks_the_map_that_sees_the_pseudo_anomalies():
    """One map lifts the pasted square far above its normal range; the other has a large spike on
    every normal image and none on the pseudo-anomalous ones, so any share of it hurts."""
    g = torch.Generator().manual_seed(0)

    def maps(spike: bool = False, square: bool = False) -> torch.Tensor:
        x = torch.rand(20, 1, 16, 16, generator=g)
        if spike:
            x[:, :, 0, 0] += 20.0
        if square:
            x[:, :, 4:6, 4:6] += 5.0
        return x

    sees_normal, sees_pseudo = maps(), maps(square=True)
    blind_normal, blind_pseudo = maps(spike=True), maps()
    w = fit_fusion(blind_normal, sees_normal, rule="pseudo", pseudo=(blind_pseudo, sees_pseudo)).weight
    assert w == 0.0  # the masker's map alone
    w = fit_fusion(sees_normal, blind_normal, rule="pseudo", pseudo=(sees_pseudo, blind_pseudo)).weight
    assert w == 1.0  # the reconstruction's map alone
    with pytest.raises(ValueError, match="pseudo"):
        fit_fusion(sees_normal, blind_normal, rule="pseudo")
