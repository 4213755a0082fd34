"""dsr: synthetic anomalies, the feature-space anomaly rule, the official checkpoint layout, end to end."""
from __future__ import annotations

import math

import pytest
import torch

from fader_kit.model.metrics import pixel_auroc
from fader_kit.maskers.registry import create_masker
from fader_kit.maskers.weights import MissingWeightsError
from masker_cases import stripes_with_defects

from fader_kit_plugins.dsr import (
    distant_code_anomalies,
    focal_loss,
    paste_colour_anomalies,
    paste_texture_anomalies,
    perlin_masks,
    perlin_noise,
)

TINY = dict(  # small widths, 64 px; DSR needs a few hundred steps per stage before it segments
    hidden=32, res_hidden=16, res_layers=1, embedding_dim=32, num_embeddings=128, restriction_width=8,
    recon_width=8, seg_width=8, upsample_width=8, batch_size=4, vq_epochs=40, epochs=60, upsample_epochs=40,
    threshold_quantile=0.98, calibration_fraction=0.0, codebook="category",
)
# the general codebook at test size: a short pretraining on procedural images, in a temporary cache
GENERAL = {**TINY, "codebook": "general", "general_steps": 150, "general_batch_size": 8, "general_size": 64}


def test_perlin_noise_vanishes_on_the_lattice_and_is_seeded():
    a = perlin_noise((32, 48), (4, 2), torch.Generator().manual_seed(0))
    b = perlin_noise((32, 48), (4, 2), torch.Generator().manual_seed(0))
    assert a.shape == (32, 48) and torch.equal(a, b)
    assert a[::8, ::24].abs().max() < 1e-6  # gradient noise is 0 at lattice points (every 8 rows, 24 cols)
    assert a.abs().max() <= math.sqrt(2) and a.std() > 0.05


def test_perlin_masks_share_of_normal_samples():
    g = torch.Generator().manual_seed(0)
    empty = perlin_masks(3, (32, 32), g, p_normal=1.0)
    full = perlin_masks(4, (32, 32), g, p_normal=0.0)
    assert empty.sum() == 0
    assert full.shape == (4, 1, 32, 32) and set(full.unique().tolist()) <= {0.0, 1.0}
    assert all(m.sum() > 0 for m in full)


def test_colour_anomalies_only_inside_the_mask():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    out = paste_colour_anomalies(images, mask, g)
    outside = mask.expand_as(images) == 0
    assert torch.equal(out[outside], images[outside])
    assert not torch.allclose(out[~outside], images[~outside])
    assert out.min() >= 0 and out.max() <= 1


def test_texture_anomalies_are_structured_seeded_and_only_inside_the_mask():
    images = torch.full((3, 3, 32, 32), 0.5)
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    a = paste_texture_anomalies(images, mask, torch.Generator().manual_seed(1))
    b = paste_texture_anomalies(images, mask, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    outside = mask.expand_as(images) == 0
    assert torch.equal(a[outside], images[outside])
    inside = a[:, :, 8:24, 8:24]
    # a texture, not a flat colour: pixels inside the mask vary within each image
    assert (inside.flatten(1).std(1) > 0.01).all()
    assert a.min() >= 0 and a.max() <= 1


def test_focal_loss_by_hand():
    probs = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1)
    eps = 1e-5
    pt = eps * 0.2 + (1 - eps) * 0.8 + eps  # DSR's label smoothing of the one-hot target
    assert focal_loss(probs, torch.ones(1, 1, 1, 1)).item() == pytest.approx(-(1 - pt) ** 2 * math.log(pt), rel=1e-5)
    assert focal_loss(torch.tensor([0.999, 0.001]).view(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)) < 1e-6


def test_distant_code_anomalies_draw_from_the_allowed_ranks():
    k = 40  # 1-d codebook 0, 1, ..., 39 and z = 0: the code of rank r is the value r
    codebook = torch.arange(k, dtype=torch.float32).view(k, 1)
    z = torch.zeros(2, 1, 16, 16)
    q = torch.full_like(z, -1.0)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1
    out = distant_code_anomalies(z, q, codebook, mask, torch.tensor([0.5, 1.0]), torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 8:], q[:, :, 8:])  # outside the mask: the original quantised vectors
    first, second = out[0, 0, :8], out[1, 0, :8]
    # ranks [0.05 K, strength K + 1): the nearest 5 % (2 codes) are skipped
    assert first.min() >= 2 and first.max() <= 20 and len(first.unique()) > 10
    assert second.min() >= 2 and second.max() <= k - 2 and second.max() > 20
    # an empty mask (a normal sample, or an image that draws another anomaly kind) changes nothing
    assert torch.equal(distant_code_anomalies(z, q, codebook, torch.zeros_like(mask), torch.ones(2), torch.Generator()), q)


def _official_vq_state(h: int, rh: int, e: int, k: int) -> dict[str, torch.Tensor]:
    """Tensors named and shaped as the official DSR `DiscreteLatentModel` (2 residual layers)."""
    def conv(name, cin, cout, ks, bias=True):
        out = {f"{name}.weight": torch.randn(cout, cin, ks, ks)}
        if bias:
            out[f"{name}.bias"] = torch.randn(cout)
        return out

    def deconv(name, cin, cout):
        return {f"{name}.weight": torch.randn(cin, cout, 4, 4), f"{name}.bias": torch.randn(cout)}

    def res(prefix, c):
        s = {}
        for i in range(2):
            s.update(conv(f"{prefix}._residual_stack._layers.{i}._block.1", c, rh, 3, bias=False))
            s.update(conv(f"{prefix}._residual_stack._layers.{i}._block.3", rh, c, 1, bias=False))
        return s

    def vq(prefix):
        return {f"{prefix}._embedding.weight": torch.randn(k, e), f"{prefix}._ema_cluster_size": torch.rand(k),
                f"{prefix}._ema_w": torch.randn(k, e)}

    state = {}
    state.update(conv("_encoder_t._conv_1", h, h, 4))
    state.update(conv("_encoder_t._conv_2", h, h, 3))
    state.update(res("_encoder_t", h))
    state.update(conv("_encoder_b._conv_1", 3, h // 2, 4))
    state.update(conv("_encoder_b._conv_2", h // 2, h, 4))
    state.update(conv("_encoder_b._conv_3", h, h, 3))
    state.update(res("_encoder_b", h))
    state.update(conv("_pre_vq_conv_bot", h + e, e, 1))
    state.update(conv("_pre_vq_conv_top", h, e, 1))
    state.update(vq("_vq_vae_top"))
    state.update(vq("_vq_vae_bot"))
    state.update(conv("_decoder_b._conv_1", 2 * e, h, 3))
    state.update(res("_decoder_b", h))
    state.update(deconv("_decoder_b._conv_trans_1", h, h // 2))
    state.update(deconv("_decoder_b._conv_trans_2", h // 2, 3))
    state.update(deconv("upsample_t", e, e))
    return state


def test_official_vq_checkpoint_layout_loads(tmp_path):
    sizes = dict(hidden=16, res_hidden=8, res_layers=2, embedding_dim=8, num_embeddings=32)
    state = _official_vq_state(16, 8, 8, 32)
    path = tmp_path / "vq_model_pretrained_128_4096.pckl"
    torch.save(state, path)
    masker = create_masker("dsr", weights=str(path), **sizes)
    assert masker.info.weights == f"file:{path}"
    assert torch.equal(masker.vq.vq_lo.codebook, state["_vq_vae_top._embedding.weight"])
    assert torch.equal(masker.vq.enc_hi.res.layers[1].block[3].weight, state["_encoder_b._residual_stack._layers.1._block.3.weight"])
    with pytest.raises(MissingWeightsError, match="hidden=128"):
        create_masker("dsr", weights=str(path), **{**sizes, "embedding_dim": 16})
    assert masker.info.details["codebook"] == f"official:{path}"
    assert create_masker("dsr").info.weights == "trained-here"


@pytest.fixture(scope="module")
def fitted():
    normal, _ = stripes_with_defects(16, 64, seed=0, defect=False)
    return create_masker("dsr", **TINY).fit(normal, seed=0)


def test_dsr_ranks_pasted_defect_above_normal_pixels(fitted):
    assert fitted.info.weights == "trained-here" and fitted.info.details["codebook"] == "category"
    for kind in ("blend", "flat"):  # a colour cast, and the stripes wiped out
        images, masks = stripes_with_defects(6, 64, seed=1, defect=True, kind=kind)
        maps = fitted.score_map(images)
        assert maps.shape == (6, 1, 64, 64) and maps.min() >= 0 and maps.max() <= 1
        assert pixel_auroc(maps, masks) > 0.9, kind
    binary = fitted.mask(images)
    assert binary[masks].float().mean() > 3 * binary[~masks].float().mean()


def test_dsr_diagnostic_maps_are_its_intermediate_stages(fitted):
    images, _ = stripes_with_defects(4, 64, seed=1, defect=True, kind="blend")
    images = images[:, :, :48, :48]  # any input size: resized like the score map
    maps = fitted.diagnostic_maps(images)
    assert set(maps) == {"coarse", "reconstruction_gap"}
    assert all(m.shape == (4, 1, 48, 48) for m in maps.values())
    assert 0 <= maps["coarse"].min() and maps["coarse"].max() <= 1 and maps["reconstruction_gap"].min() >= 0
    # DSR's output is the upsampling module's refinement of the coarse map: the two differ ...
    assert fitted.info.details["output"] == "upsampled"
    assert not torch.allclose(maps["coarse"], fitted.score_map(images), atol=1e-3)
    # ... and output="coarse" scores with the coarse map itself
    original = fitted.config
    try:
        fitted.config = original.model_copy(update={"output": "coarse"})
        assert torch.allclose(maps["coarse"], fitted.score_map(images))
    finally:
        fitted.config = original


def test_dsr_save_load_round_trip(fitted, tmp_path):
    images, _ = stripes_with_defects(3, 64, seed=2, defect=True, kind="blend")
    fresh = create_masker("dsr", **TINY).load(fitted.save(tmp_path / "dsr.pt"))
    assert torch.equal(fresh.score_map(images), fitted.score_map(images))
    assert torch.equal(fresh.mask(images), fitted.mask(images))


def test_dsr_size_check():
    masker = create_masker("dsr", **TINY)
    with pytest.raises(ValueError, match="divisible by 64"):
        masker.fit(torch.rand(2, 3, 96, 96))
    with pytest.raises(ValueError, match="at least 64"):
        create_masker("dsr", **{**TINY, "seg_downsample": 1}).fit(torch.rand(2, 3, 32, 32))


def test_general_images_are_varied_and_seeded():
    from fader_kit.data.procedural import general_images

    a = general_images(12, 32, torch.Generator().manual_seed(3))
    b = general_images(12, 32, torch.Generator().manual_seed(3))
    assert a.shape == (12, 3, 32, 32) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    means = a.mean((1, 2, 3))
    assert means.std() > 0.05 and a.std((2, 3)).mean() > 0.02  # differ between images and within them
    with pytest.raises(ValueError, match="size"):
        general_images(2, 4, torch.Generator())


def test_general_codebook_is_pretrained_once_and_reused_across_categories(tmp_path):
    """Two categories (stripes, and a checkerboard of other colours) share one cached general VQ:
    the second fit loads the file (pretraining count and file unchanged); each ranks its pasted
    defect above its normal pixels."""
    import fader_kit_plugins.dsr as dsr

    options = {**GENERAL, "cache_dir": str(tmp_path)}
    before = dsr.general_vq_pretrain_calls
    stripes, _ = stripes_with_defects(16, 64, seed=0, defect=False)
    first = create_masker("dsr", **options).fit(stripes, seed=0)
    path = dsr.general_vq_path(first.config)
    assert dsr.general_vq_pretrain_calls == before + 1 and path.is_file()
    assert path.parent.parent == tmp_path / "dsr" / "general-vq" and (path.parent / "recipe.json").is_file()
    stamp = path.stat().st_mtime_ns
    assert first.info.details["codebook"] == f"general:{path.parent.name}"

    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = (((yy // 8) + (xx // 8)) % 2).float()
    g = torch.Generator().manual_seed(5)
    tiles = (0.3 + 0.4 * checker).expand(16, 3, 64, 64) * torch.tensor([0.5, 0.9, 0.7]).view(1, 3, 1, 1)
    tiles = (tiles + 0.03 * torch.randn(16, 3, 64, 64, generator=g)).clamp(0, 1)
    second = create_masker("dsr", **options).fit(tiles[:12], seed=1)
    assert dsr.general_vq_pretrain_calls == before + 1  # loaded, not retrained
    assert path.stat().st_mtime_ns == stamp
    saved = torch.load(path, weights_only=True)
    assert torch.equal(second.vq.vq_lo.codebook, saved["vq_lo.codebook"])
    assert torch.equal(first.vq.vq_hi.codebook, second.vq.vq_hi.codebook)  # frozen in both fits

    images, masks = stripes_with_defects(6, 64, seed=1, defect=True, kind="blend")
    assert pixel_auroc(first.score_map(images), masks) > 0.9
    defective = tiles[12:].clone()
    truth = torch.zeros(4, 1, 64, 64, dtype=torch.bool)
    defective[:, :, 20:36, 24:40] = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    truth[:, :, 20:36, 24:40] = True
    assert pixel_auroc(second.score_map(defective), truth) > 0.9
