"""dino_vit / plain_vit: CLS attention extraction, the top-mass rule, weights, registration.

Everything runs on tiny ViTs (32 px, patch 8) except one small full-size check of the
default ``dino_vit`` built from random weights.  Nothing touches the network.
"""
from __future__ import annotations

import importlib.metadata

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.maskers.weights import RANDOM_INIT, MissingWeightsError
from fader_kit_plugins.attention import (
    AttentionMasker,
    AttentionMaskerConfig,
    cls_patch_attention,
    make_dino_vit,
    make_plain_vit,
    top_mass_mask,
)

TINY = "vit_tiny_patch16_224.augreg_in21k"  # a registered timm name, built at 32 px (4 tokens)


# -- the top-mass rule on hand values ------------------------------------------------------------
@pytest.mark.parametrize(
    "weights, fraction, expected",
    [
        ([0.5, 0.3, 0.15, 0.05], 0.6, [True, True, False, False]),  # 0.5 < 0.6, 0.8 >= 0.6
        ([0.5, 0.3, 0.15, 0.05], 0.5, [True, False, False, False]),  # 0.5 reaches 0.5 alone
        ([0.5, 0.3, 0.15, 0.05], 0.81, [True, True, True, False]),
        ([0.15, 0.5, 0.05, 0.3], 0.6, [False, True, False, True]),  # order of entries is irrelevant
        ([2.0, 6.0, 1.0, 1.0], 0.6, [False, True, False, False]),  # unnormalised: 6/10 = 0.6
        ([0.25, 0.25, 0.25, 0.25], 0.6, [True, True, True, False]),  # ties: first by position
        ([0.4, 0.0, 0.6, 0.0], 1.0, [True, False, True, False]),  # all mass, zeros excluded
    ],
)
def test_top_mass_mask_hand_values(weights, fraction, expected):
    got = top_mass_mask(torch.tensor(weights), fraction)
    assert got.dtype == torch.bool
    assert got.tolist() == expected


def test_top_mass_mask_is_batched_and_validates():
    w = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]], [[0.3, 0.3, 0.4, 0.0], [1, 1, 1, 1.0]]])
    got = top_mass_mask(w, 0.6)
    assert got.tolist() == [
        [[True, False, False, False], [False, False, False, True]],
        [[True, False, True, False], [True, True, True, False]],
    ]
    with pytest.raises(ValueError, match="fraction"):
        top_mass_mask(w, 0.0)


# -- a hand-built ViT whose CLS token looks at a known patch -------------------------------------
def hand_built_vit(targets: tuple[int, int], reg_tokens: int = 0) -> VisionTransformer:
    """32 px, patch 8 (4x4 grid), dim 16, one block, two heads; head h's CLS query hits patch targets[h].

    Patch embedding is zero, so a patch token is its position embedding: one-hot e1 for ordinary
    patches, e2 for targets[0], e4 for targets[1]; the class token is e3 and registers are 0.
    After LayerNorm a one-hot has 3.87 at its hot index and -0.26 elsewhere.  Head 0's query reads
    dim 3 (the class token's) and its key dim 2, head 1's key dim 4: the logit of the CLS query
    against its target patch is 3*3.87 * 3*3.87 / sqrt(8) = 47.7 (32.6 when both heads share the
    target, a two-hot token), against any other token <= 0.
    """
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0,
        qkv_bias=True, reg_tokens=reg_tokens, class_token=True,
    ).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for norm in (vit.blocks[0].norm1, vit.blocks[0].norm2, vit.norm):
            norm.weight.fill_(1.0)
        prefix = vit.num_prefix_tokens
        vit.cls_token[0, 0, 3] = 1.0
        vit.pos_embed[0, prefix:, 1] = 1.0
        for patch in targets:
            vit.pos_embed[0, prefix + patch] = 0.0
        for patch, dim in zip(targets, (2, 4)):
            vit.pos_embed[0, prefix + patch, dim] = 1.0
        qkv = vit.blocks[0].attn.qkv.weight  # rows: q (16), k (16), v (16); head h owns dims 8h..8h+7
        qkv[0, 3] = 3.0        # head 0 query <- class-token marker
        qkv[16 + 0, 2] = 3.0   # head 0 key   <- target-0 marker
        qkv[8, 3] = 3.0        # head 1 query <- class-token marker
        qkv[16 + 8, 4] = 3.0   # head 1 key   <- target-1 marker
    return vit


def tiny_masker(vit: VisionTransformer, **config) -> AttentionMasker:
    cfg = AttentionMaskerConfig(model="hand-built", mean=(0, 0, 0), std=(1, 1, 1), **config)
    return AttentionMasker(cfg, model=vit, weights_source="hand-built")


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_cls_attention_lands_on_the_known_patch(reg_tokens):
    vit = hand_built_vit((5, 5), reg_tokens=reg_tokens)
    att = cls_patch_attention(vit, torch.rand(2, 3, 32, 32))
    assert att.shape == (2, 2, 16)  # [B, heads, patches]: prefix tokens dropped
    assert torch.all(att[:, :, 5] > 0.999)
    assert torch.all(att.argmax(dim=-1) == 5)


def test_mask_covers_exactly_the_known_patch_at_the_image_resolution():
    masker = tiny_masker(hand_built_vit((5, 5), reg_tokens=2))
    images = torch.rand(3, 3, 64, 64)  # resized to the model's 32 px, mask back at 64 px
    mask = masker.mask(images)
    assert mask.shape == (3, 1, 64, 64) and mask.dtype == torch.bool
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[16:32, 16:32] = True  # patch 5 = grid (1, 1) of 4x4, 16 px per patch at 64 px
    assert torch.equal(mask[:, 0], expected.expand(3, 64, 64))
    scores = masker.score_map(images)
    assert scores.shape == (3, 1, 64, 64) and scores.dtype == torch.float32
    # bilinear by default: the peak lies inside the target patch
    peak = int(scores[0, 0].argmax())
    assert 16 <= peak // 64 < 32 and 16 <= peak % 64 < 32
    # nearest: uniform attention scores 1.0, the target patch holds (almost) all 16 shares
    blocks = tiny_masker(hand_built_vit((5, 5), reg_tokens=2), score_upsample="nearest").score_map(images)
    assert torch.all(blocks[:, 0, 16:32, 16:32] > 15.9)
    assert torch.all(blocks[:, 0, :16] < 0.01) and torch.all(blocks[:, 0, 32:] < 0.01)


def test_union_of_heads_differs_from_the_mean():
    vit = hand_built_vit((0, 15))  # head 0 -> top-left patch, head 1 -> bottom-right patch
    images = torch.rand(1, 3, 32, 32)
    mean_mask = tiny_masker(vit, heads="mean", mass_fraction=0.5).mask(images)[0, 0]
    union_mask = tiny_masker(vit, heads="union", mass_fraction=0.5).mask(images)[0, 0]
    # mean attention is 0.5 / 0.5 on the two patches: half the mass is reached by the first alone
    assert mean_mask[:8, :8].all() and not mean_mask[24:, 24:].any() and mean_mask.sum() == 64
    # union: each head keeps its own patch
    assert union_mask[:8, :8].all() and union_mask[24:, 24:].all() and union_mask.sum() == 128
    both = tiny_masker(vit, heads="mean", mass_fraction=0.6).mask(images)[0, 0]
    assert both.sum() == 128


def test_recomputed_attention_equals_timms_own_weights():
    """Random tiny ViT, patch 8, with registers: ours == the softmax timm computes unfused."""
    torch.manual_seed(1)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0, reg_tokens=3).eval()
    attn = vit.blocks[-1].attn
    attn.fused_attn = False  # timm then materialises the weights and passes them through attn_drop
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vit(x)
    handle.remove()
    reference = seen[0][:, :, 0, vit.num_prefix_tokens:]  # CLS row, patch columns
    with torch.no_grad():
        ours = cls_patch_attention(vit, x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_models_without_cls_token_or_qkv_are_refused():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0,
                            class_token=False, global_pool="avg")
    with pytest.raises(TypeError, match="class token"):
        cls_patch_attention(vit, torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="VisionTransformer"):
        cls_patch_attention(torch.nn.Linear(2, 2), torch.rand(1, 3, 32, 32))


def test_bad_images_get_a_clear_error():
    masker = tiny_masker(hand_built_vit((5, 5)))
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, H, W\]"):
        masker.mask(torch.rand(2, 1, 32, 32))


# -- factories, weights, persistence -------------------------------------------------------------
def test_factories_need_weights_or_explicit_random(monkeypatch, tmp_path):
    monkeypatch.delenv("FADER_KIT_WEIGHTS", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vit_small_patch16_224.dino"):
        make_dino_vit(offline=True)
    masker = make_plain_vit(model=TINY, input_size=32, allow_random_weights=True, offline=True, seed=3)
    assert masker.info.name == "plain_vit" and masker.info.weights == RANDOM_INIT
    assert masker.info.input_size == 32 and masker.info.details["patch_size"] == 16
    assert masker.mask(torch.rand(2, 3, 48, 48)).shape == (2, 1, 48, 48)
    with pytest.raises(ValueError, match="mass_fraction"):
        make_dino_vit(mass_fraction=1.5, allow_random_weights=True)
    with pytest.raises(TypeError, match="unexpected option.*no_such_option"):
        make_dino_vit(no_such_option=1)


def test_checkpoint_from_random_init_loads_through_weights_path(tmp_path, monkeypatch):
    monkeypatch.delenv("FADER_KIT_WEIGHTS", raising=False)
    first = make_dino_vit(model=TINY, input_size=32, allow_random_weights=True, offline=True)
    assert first.info.weights == RANDOM_INIT
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file(first.model.state_dict(), str(path))
    second = make_dino_vit(model=TINY, input_size=32, weights=path, offline=True)
    assert second.info.weights == f"file:{path.resolve()}"
    images = torch.rand(2, 3, 40, 40)
    torch.testing.assert_close(second.score_map(images), first.score_map(images), rtol=0, atol=0)
    assert torch.equal(second.mask(images), first.mask(images))
    # through the registry, as the CLI's --weights does
    reg = MaskerRegistry(entry_points=[_attention_entry_point()])
    third = reg.create("dino_vit", model=TINY, input_size=32, weights=str(path), device="cpu")
    torch.testing.assert_close(third.score_map(images), first.score_map(images), rtol=0, atol=0)


def test_save_and_load_keep_config_not_backbone(tmp_path):
    masker = tiny_masker(hand_built_vit((5, 5)))
    path = masker.save(tmp_path / "masker.pt")
    assert path.stat().st_size < 20_000  # no backbone weights in there
    masker.load(path)
    other = AttentionMasker(AttentionMaskerConfig(model="another", mean=(0, 0, 0), std=(1, 1, 1)),
                            model=hand_built_vit((5, 5)))
    with pytest.raises(ValueError, match="hand-built"):
        other.load(path)


def _attention_entry_point() -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name="attention", value="fader_kit_plugins.attention", group="fader_kit")


def test_both_maskers_come_from_the_attention_entry_point():
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="fader_kit")}
    assert installed.get("attention") == "fader_kit_plugins.attention"
    reg = MaskerRegistry(entry_points=[_attention_entry_point()])
    entries = {e.name: e for e in reg.list()}
    assert set(entries) == {"dino_vit", "plain_vit"}
    assert entries["dino_vit"].weights == "hub:vit_small_patch16_224.dino"
    assert entries["plain_vit"].weights == "hub:vit_base_patch16_224.augreg_in21k"
    assert {e.plugin for e in entries.values()} == {"attention"}


def test_full_size_dino_vit_from_random_init_masks_the_paper_share():
    """The one full-size check: default dino_vit (ViT-S/16 at 224), random weights, one image."""
    masker = make_dino_vit(allow_random_weights=True, offline=True)
    info = masker.info
    assert (info.weights, info.input_size, info.details["patch_size"]) == (RANDOM_INIT, 224, 16)
    att = masker.head_attention(torch.rand(1, 3, 64, 64))
    assert att.shape == (1, 6, 14, 14)
    keep = top_mass_mask(att.mean(dim=1).flatten(1), 0.6)
    share = (att.mean(dim=1).flatten(1) * keep).sum() / att.mean(dim=1).sum()
    assert share >= 0.6  # the kept patches hold at least 60% of the attention
    mask = masker.mask(torch.rand(1, 3, 64, 64))
    assert mask.shape == (1, 1, 64, 64) and 0 < mask.float().mean() < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    masker = tiny_masker(hand_built_vit((0, 15)), heads="union")
    images = torch.rand(2, 3, 48, 48)
    cpu_scores, cpu_mask = masker.score_map(images), masker.mask(images)
    masker.to("cuda")
    assert masker.device.type == "cuda"
    cuda_images = images.cuda()
    torch.testing.assert_close(masker.score_map(cuda_images).cpu(), cpu_scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(masker.mask(cuda_images).cpu(), cpu_mask)
