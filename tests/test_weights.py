"""fader_kit.maskers.weights: local files and folders, FADER_KIT_WEIGHTS, the hub cache, the offline error.

Tiny models only (a registered timm ViT built at 32 px and depth 1; a tiny open_clip config
registered for the test).  The hub cache is a temporary folder; nothing touches the network.
"""
from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from fader_kit.maskers import weights as W
from fader_kit.maskers.weights import RANDOM_INIT, MissingWeightsError, load_open_clip_model, load_timm_model

TINY = "vit_tiny_patch16_224.augreg_in21k"
TINY_KW = dict(img_size=32, depth=1, num_classes=0)


@pytest.fixture(autouse=True)
def _no_env_folder(monkeypatch):
    monkeypatch.delenv("FADER_KIT_WEIGHTS", raising=False)


@pytest.fixture
def random_tiny(tmp_path):
    model, source = load_timm_model(TINY, allow_random_weights=True, offline=True, cache_dir=tmp_path / "hub", **TINY_KW)
    assert source == RANDOM_INIT
    return model


def features(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.forward_features(x)


def test_random_init_only_when_asked_and_error_names_model_file_and_three_ways(tmp_path, monkeypatch):
    env = tmp_path / "weights"
    env.mkdir()
    monkeypatch.setenv("FADER_KIT_WEIGHTS", str(env))
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as info:
        load_timm_model(TINY, offline=True, cache_dir=tmp_path / "hub", **TINY_KW)
    assert time.perf_counter() - start < 10  # no network retries
    text = str(info.value)
    assert info.value.model == TINY
    assert f"no pretrained weights for '{TINY}'" in text
    assert str(env / f"{TINY}.safetensors") in text  # the file it looked for
    assert "models--timm--vit_tiny_patch16_224.augreg_in21k" in text  # the cache place it looked in
    for way in ("--weights PATH", "FADER_KIT_WEIGHTS", "Hugging Face cache", "--allow-random-weights", "offline=True"):
        assert way in text


def test_weights_file_safetensors_and_pth_give_identical_outputs(tmp_path, random_tiny):
    expected = features(random_tiny)
    sft = tmp_path / "a.safetensors"
    save_file(random_tiny.state_dict(), str(sft))
    pth = tmp_path / "b.pth"
    torch.save({"state_dict": random_tiny.state_dict()}, pth)  # wrapped, as training scripts write it
    for path in (sft, pth):
        model, source = load_timm_model(TINY, weights=path, offline=True, **TINY_KW)
        assert source == f"file:{path.resolve()}"
        assert not model.training
        torch.testing.assert_close(features(model), expected, rtol=0, atol=0)


def test_weights_folder_and_env_folder(tmp_path, random_tiny, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(random_tiny.state_dict(), str(folder / f"{TINY}.safetensors"))
    model, source = load_timm_model(TINY, weights=folder, offline=True, **TINY_KW)
    assert source.endswith(f"{TINY}.safetensors")
    torch.testing.assert_close(features(model), features(random_tiny), rtol=0, atol=0)

    env = tmp_path / "env"
    env.mkdir()
    torch.save(random_tiny.state_dict(), env / "vit_tiny_patch16_224.pth")  # plain arch name accepted
    monkeypatch.setenv("FADER_KIT_WEIGHTS", str(env))
    model, source = load_timm_model(TINY, offline=True, **TINY_KW)
    assert source == f"file:{(env / 'vit_tiny_patch16_224.pth').resolve()}"
    torch.testing.assert_close(features(model), features(random_tiny), rtol=0, atol=0)


def test_explicit_bad_paths_are_errors_not_fallbacks(tmp_path, random_tiny):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_timm_model(TINY, weights=tmp_path / "nope.pth", allow_random_weights=True, **TINY_KW)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match=r"has no checkpoint for .*vit_tiny_patch16_224.augreg_in21k.safetensors"):
        load_timm_model(TINY, weights=empty, allow_random_weights=True, **TINY_KW)
    other, _ = load_timm_model(TINY, allow_random_weights=True, offline=True, img_size=32, depth=2, num_classes=0)
    misfit = tmp_path / "depth2.safetensors"
    save_file(other.state_dict(), str(misfit))
    with pytest.raises(MissingWeightsError, match="depth2.safetensors does not fit"):
        load_timm_model(TINY, weights=misfit, **TINY_KW)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="cannot read checkpoint"):
        load_timm_model(TINY, weights=garbage, **TINY_KW)


def test_original_layout_goes_through_timms_converter(tmp_path, random_tiny):
    """A DataParallel-style checkpoint ('module.' keys) fails the strict load; timm's route cleans it."""
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in random_tiny.state_dict().items()}}, path)
    model, source = load_timm_model(TINY, weights=path, offline=True, **TINY_KW)
    assert source.startswith("file:")
    torch.testing.assert_close(features(model), features(random_tiny), rtol=0, atol=0)


def test_classifier_of_a_full_checkpoint_is_dropped_for_a_headless_model(tmp_path, random_tiny):
    """Hub files carry the classifier; a masker builds the model without one (num_classes=0)."""
    with_head, _ = load_timm_model(TINY, allow_random_weights=True, offline=True, img_size=32, depth=1, num_classes=7)
    with_head.load_state_dict(random_tiny.state_dict(), strict=False)  # same trunk, plus a head
    path = tmp_path / "full.safetensors"
    save_file(with_head.state_dict(), str(path))
    model, _ = load_timm_model(TINY, weights=path, offline=True, **TINY_KW)
    torch.testing.assert_close(features(model), features(random_tiny), rtol=0, atol=0)
    # but a model that wants a head does not get a half-loaded one
    with pytest.raises(MissingWeightsError, match="does not fit"):
        load_timm_model(TINY, weights=tmp_path / "full.safetensors", offline=True, img_size=32, depth=1, num_classes=3)


def test_hub_cache_is_used_offline(tmp_path, random_tiny):
    cache = tmp_path / "hub"
    snapshot = cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(random_tiny.state_dict(), str(snapshot / "model.safetensors"))
    (cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "refs").mkdir()
    (cache / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "refs" / "main").write_text("0123abcd")
    model, source = load_timm_model(TINY, offline=True, cache_dir=cache, **TINY_KW)
    assert source == f"hub:{TINY}"
    torch.testing.assert_close(features(model), features(random_tiny), rtol=0, atol=0)


def test_offline_resolution_never_waits_for_a_dead_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.resolve_offline(None) == (True, "HF_HUB_OFFLINE is set")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once, locally
    start = time.perf_counter()
    assert W.hub_reachable(timeout=2.0) is False
    offline, why = W.resolve_offline(None)
    assert offline and "unreachable" in why
    assert time.perf_counter() - start < 6
    assert W.resolve_offline(True)[0] is True


def test_candidate_files_and_message():
    files = [p.name for p in W.candidate_files(W.Path("/w"), "vit_small_patch16_224.dino", ["dino.pth"])]
    assert files[:2] == ["vit_small_patch16_224.dino.safetensors", "vit_small_patch16_224.dino.pth"]
    assert "vit_small_patch16_224.safetensors" in files and files[-1] == "dino.pth"
    msg = W.missing_weights_message("m", ["place A"], download_hint="get it")
    assert "place A" in msg and "get it" in msg and "1." in msg and "2." in msg and "3." in msg


# -- open_clip ------------------------------------------------------------------------------------
TINY_CLIP = "fk-test-tiny-clip"


@pytest.fixture(scope="module")
def tiny_clip_config(tmp_path_factory):
    """Register a tiny open_clip architecture (open_clip keeps configs in a module-level table)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


def test_open_clip_checkpoint_round_trip_and_error(tmp_path, tiny_clip_config):
    with pytest.raises(MissingWeightsError) as info:
        load_open_clip_model(tiny_clip_config, "none", offline=True, cache_dir=tmp_path)
    assert f"'{tiny_clip_config}/none'" in str(info.value) and "open_clip.create_model" in str(info.value)
    model, source = load_open_clip_model(tiny_clip_config, "none", allow_random_weights=True, offline=True)
    assert source == RANDOM_INIT
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, source = load_open_clip_model(tiny_clip_config, "none", weights=path, offline=True)
    assert source == f"file:{path.resolve()}"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_open_clip_model("no-such-arch", "x")


def test_default_winclip_weights_error_names_the_release(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_open_clip_model("ViT-B-16-plus-240", "laion400m_e31", offline=True, cache_dir=tmp_path)
    text = str(info.value)
    assert "ViT-B-16-plus-240/laion400m_e31" in text
    assert "models--timm--vit_base_patch16_plus_clip_240.laion400m_e31" in text
    assert "ViT-B-16-plus-240.laion400m_e31.safetensors" in text
