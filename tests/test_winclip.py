"""winclip: prompts, window geometry, harmonic aggregation, the open_clip window encoder.

The aggregation is checked on a stand-in encoder whose embeddings (and so whose window scores)
are known; the open_clip path on a tiny open_clip architecture registered for the test.  No
full-size model is built here (the full WinCLIP takes about a minute to build on a CPU core).
"""
from __future__ import annotations

import importlib.metadata
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fader_kit.maskers.registry import MaskerOptionError, MaskerRegistry
from fader_kit.maskers.weights import RANDOM_INIT
from fader_kit_plugins.winclip import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    OpenClipWindowEncoder,
    WinClipConfig,
    WinClipMasker,
    anomaly_probability,
    category_object_name,
    class_text_embeddings,
    encode_text_trimmed,
    harmonic_aggregation,
    make_winclip,
    prompt_ensemble,
    sliding_windows,
)


# -- prompts -------------------------------------------------------------------------------------
def test_prompt_ensemble_is_states_times_templates():
    normal, anomalous = prompt_ensemble("screw")
    assert len(TEMPLATES) == len(set(TEMPLATES)) == 22
    assert len(normal) == len(NORMAL_STATES) * 22 == 154 and len(anomalous) == len(ANOMALOUS_STATES) * 22 == 88
    assert "a close-up photo of a flawless screw." in normal
    assert "a photo of the screw with defect for anomaly detection." in anomalous
    assert not set(normal) & set(anomalous)


def test_class_embeddings_average_normalised_prompt_embeddings():
    normal, anomalous = prompt_ensemble("object")

    def encode(prompts):  # first normal prompt: long vector along e0; other normal prompts: e2
        rows = []
        for p in prompts:
            v = torch.zeros(4)
            if p == normal[0]:
                v[0] = 10.0
            elif p in normal:
                v[2] = 1.0
            else:
                v[1] = 3.0
            rows.append(v)
        return torch.stack(rows)

    text = class_text_embeddings(encode, "object")
    n = len(normal)
    expected_normal = F.normalize(torch.tensor([1.0, 0.0, n - 1.0, 0.0]), dim=0)  # not (10, 0, n-1)
    torch.testing.assert_close(text[0], expected_normal)
    torch.testing.assert_close(text[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_anomaly_probability_hand_values():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[0.0, 1.0], [5.0, 0.0], [1.0, 1.0]])
    p = anomaly_probability(emb, text, temperature=1.0)
    e = math.e
    torch.testing.assert_close(p, torch.tensor([e / (1 + e), 1 / (1 + e), 0.5]))
    p_sharp = anomaly_probability(emb, text, temperature=0.5)
    torch.testing.assert_close(p_sharp[0], torch.tensor(e**2 / (1 + e**2)))


# -- windows and harmonic aggregation ----------------------------------------------------------------
def test_sliding_windows_on_a_3x3_grid():
    assert sliding_windows((3, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert sliding_windows((15, 15), 2).shape == (196, 4)
    assert sliding_windows((15, 15), 3).shape == (169, 9)
    assert sliding_windows((2, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5]]
    with pytest.raises(ValueError, match="does not fit"):
        sliding_windows((3, 3), 4)
    # stride 2 on a 5-wide grid: starts 0, 2 and the closing 3, so every patch stays covered
    strided = sliding_windows((5, 5), 2, stride=2)
    assert strided.shape == (9, 4) and strided[0].tolist() == [0, 1, 5, 6] and strided[-1].tolist() == [18, 19, 23, 24]
    assert set(strided.flatten().tolist()) == set(range(25))
    # the unfold-free construction agrees with unfold for stride 1
    unfolded = F.unfold(torch.arange(15.0 * 15).view(1, 1, 15, 15), kernel_size=3).squeeze(0).T.long()
    assert torch.equal(sliding_windows((15, 15), 3), unfolded)


def test_harmonic_aggregation_hand_values():
    scores = torch.tensor([[1.0, 0.5, 0.25, 0.2]])
    got = harmonic_aggregation(scores, sliding_windows((3, 3), 2), (3, 3))
    expected = torch.tensor([[
        [1.0, 2 / (1 + 2), 0.5],
        [2 / (1 + 4), 4 / (1 + 2 + 4 + 5), 2 / (2 + 5)],
        [0.25, 2 / (4 + 5), 0.2],
    ]])
    torch.testing.assert_close(got, expected)


class StandInEncoder:
    """A WindowEncoder with known embeddings: each window's embedding sits at a chosen angle.

    With text vectors e0 (normal) and e1 (anomalous) and temperature 1, an embedding at angle t
    scores sigmoid(sin t - cos t).  Images are 3x3 pixels on a 3x3 grid: no resizing anywhere.
    """

    input_size = 3
    grid_size = (3, 3)
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self, image_angle: float, window_angles: list[float]) -> None:
        self.image_angle = image_angle
        self.window_angles = torch.tensor(window_angles)
        self.calls = 0

    def encode(self, pixels, windows):
        self.calls += 1
        b = pixels.shape[0]
        assert pixels.shape[-2:] == (3, 3)
        image = torch.tensor([[math.cos(self.image_angle), math.sin(self.image_angle)]]).expand(b, 2)
        assert len(windows) == 1 and windows[0].shape == (4, 4)
        win = torch.stack([self.window_angles.cos(), self.window_angles.sin()], dim=-1)  # [4, 2]
        return image, [win.unsqueeze(0).expand(b, 4, 2)]


def sigmoid_score(angle: float) -> float:
    return 1 / (1 + math.exp(-(math.sin(angle) - math.cos(angle))))


def test_winclip_map_on_a_stand_in_encoder():
    angles = [1.2, 0.9, 0.4, 0.1]
    encoder = StandInEncoder(image_angle=0.7, window_angles=angles)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    config = WinClipConfig(scales=(2,), temperature=1.0, threshold=0.45, batch_size=2)
    masker = WinClipMasker(config, encoder=encoder, text_embeddings=text, weights_source="stand-in")
    images = torch.rand(3, 3, 3, 3)
    got = masker.score_map(images)
    assert got.shape == (3, 1, 3, 3)
    assert encoder.calls == 2  # batch_size 2: images in two passes
    s = [sigmoid_score(a) for a in angles]
    covering = {0: [0], 1: [0, 1], 2: [1], 3: [0, 2], 4: [0, 1, 2, 3], 5: [1, 3], 6: [2], 7: [2, 3], 8: [3]}
    image_score = sigmoid_score(0.7)
    expected = torch.empty(9)
    for patch, wins in covering.items():
        window_mean = len(wins) / sum(1 / s[w] for w in wins)  # harmonic mean over covering windows
        expected[patch] = 2 / (1 / image_score + 1 / window_mean)  # harmonic mean with the image score
    torch.testing.assert_close(got[0, 0], expected.reshape(3, 3))
    torch.testing.assert_close(got[2, 0], expected.reshape(3, 3))
    assert torch.equal(masker.mask(images)[0, 0], expected.reshape(3, 3) > 0.45)
    torch.testing.assert_close(masker.image_scores(images), torch.full((3,), image_score))
    # bilinear upsampling to a larger image keeps the values between the grid's extremes
    up = masker.score_map(torch.rand(1, 3, 3, 3))
    assert up.min() >= expected.min() - 1e-6 and up.max() <= expected.max() + 1e-6


def test_threshold_calibration_and_persistence(tmp_path):
    encoder = StandInEncoder(image_angle=0.7, window_angles=[1.2, 0.9, 0.4, 0.1])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    config = WinClipConfig(scales=(2,), temperature=1.0, threshold_quantile=0.5)
    masker = WinClipMasker(config, encoder=encoder, text_embeddings=text)
    assert masker.threshold == 0.5  # the fixed default until fit() calibrates
    masker.fit(torch.rand(4, 3, 3, 3))
    grid = masker.score_map(torch.rand(1, 3, 3, 3)).flatten()
    assert masker.threshold == pytest.approx(float(grid.double().median()), abs=1e-6)
    assert masker.mask(torch.rand(1, 3, 3, 3)).sum() == 4  # 9 values, median excluded: 4 above
    path = masker.save(tmp_path / "winclip.pt")
    fresh = WinClipMasker(config, encoder=encoder, text_embeddings=torch.eye(2))
    fresh.load(path)
    assert fresh.threshold == masker.threshold
    torch.testing.assert_close(fresh.text_embeddings, text)


def test_config_validation():
    with pytest.raises(ValueError):
        WinClipConfig(scales=(0,))
    with pytest.raises(MaskerOptionError, match="invalid options for masker 'winclip': threshold: .*less than 1"):
        make_winclip(threshold=2.0)
    with pytest.raises(MaskerOptionError, match="unexpected option.*epochs; accepted: .*object_name"):
        make_winclip(epochs=1)
    with pytest.raises(ValueError, match="text_embeddings"):
        WinClipMasker(WinClipConfig(), encoder=StandInEncoder(0.1, [0.1] * 4), text_embeddings=torch.zeros(3, 2))


# -- the open_clip encoder on a tiny architecture ------------------------------------------------
TINY_CLIP = "fk-test-winclip-tiny"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    return open_clip.create_model(TINY_CLIP, pretrained=None).eval()


def test_window_encoder_matches_clip_and_sees_only_its_window(tiny_clip):
    encoder = OpenClipWindowEncoder(tiny_clip.visual, window_batch=3)
    assert encoder.grid_size == (4, 4) and encoder.input_size == 32
    x = torch.randn(2, 3, 32, 32)
    windows = [sliding_windows((4, 4), 2), torch.arange(16).view(1, 16)]
    with torch.no_grad():
        image, (small, whole) = encoder.encode(x, windows)
        torch.testing.assert_close(image, tiny_clip.encode_image(x))  # the ordinary CLIP embedding
        torch.testing.assert_close(whole[:, 0], image)  # a window over every patch is the image
        assert small.shape == (2, 9, 16)
        # change pixels outside window 0 (patches 0, 1, 4, 5 = top-left 16x16): window 0 is unmoved
        y = x.clone()
        y[:, :, 16:, :] = torch.randn_like(y[:, :, 16:, :])
        image_y, (small_y, _) = encoder.encode(y, windows)
    torch.testing.assert_close(small_y[:, 0], small[:, 0])
    assert not torch.allclose(small_y[:, 8], small[:, 8]) and not torch.allclose(image_y, image)


def test_trimmed_text_encoding_equals_open_clips(tiny_clip):
    import open_clip

    tokens = open_clip.get_tokenizer(TINY_CLIP)(sum(prompt_ensemble("metal nut"), []))
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(tiny_clip, tokens), tiny_clip.encode_text(tokens))


def test_make_winclip_random_init_and_checkpoint_round_trip(tiny_clip, tmp_path, monkeypatch):
    import open_clip

    monkeypatch.delenv("FADER_KIT_WEIGHTS", raising=False)
    options = dict(architecture=TINY_CLIP, pretrained="none", offline=True, scales=[2, 3])
    torch.manual_seed(5)
    first = make_winclip(allow_random_weights=True, **options)
    assert first.info.weights == RANDOM_INIT and first.info.input_size == 32
    assert not any("token_embedding" in key for key in first.encoder.state_dict())  # text tower dropped
    # the same random CLIP (same seed), saved as an open_clip checkpoint and loaded by path
    torch.manual_seed(5)
    full = open_clip.create_model(TINY_CLIP, pretrained=None)
    path = tmp_path / "tiny_clip.pt"
    torch.save({"state_dict": full.state_dict()}, path)
    second = make_winclip(weights=str(path), **options)
    assert second.info.weights == f"file:{path.resolve()}"
    torch.testing.assert_close(second.text_embeddings, first.text_embeddings, rtol=0, atol=0)
    images = torch.rand(2, 3, 48, 48)
    maps = first.score_map(images)
    torch.testing.assert_close(second.score_map(images), maps, rtol=0, atol=0)
    assert maps.shape == (2, 1, 48, 48) and torch.all((maps > 0) & (maps < 1))
    assert torch.equal(second.mask(images), first.mask(images))


def test_winclip_comes_from_its_entry_point():
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="fader_kit")}
    assert installed.get("winclip") == "fader_kit_plugins.winclip"
    ep = importlib.metadata.EntryPoint(name="winclip", value="fader_kit_plugins.winclip", group="fader_kit")
    entries = MaskerRegistry(entry_points=[ep]).list()
    assert [(e.name, e.plugin, e.weights) for e in entries] == [
        ("winclip", "winclip", "hub:ViT-B-16-plus-240/laion400m_e31")
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny_clip):
    import copy

    text = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    config = WinClipConfig(architecture=TINY_CLIP, scales=(2, 3))
    masker = WinClipMasker(config, encoder=OpenClipWindowEncoder(copy.deepcopy(tiny_clip.visual)), text_embeddings=text)
    images = torch.rand(2, 3, 40, 40)
    cpu = masker.score_map(images)
    masker.to("cuda")
    assert masker.device.type == "cuda"
    torch.testing.assert_close(masker.score_map(images.cuda()).cpu(), cpu, rtol=1e-4, atol=1e-4)


# -- category names in the prompts -------------------------------------------------------------------
@pytest.mark.parametrize("category, words", [
    ("metal_nut", "metal nut"), ("pcb1", "printed circuit board"), ("pcb4", "printed circuit board"),
    ("macaroni2", "macaroni"), ("chewinggum", "chewing gum"), ("pipe_fryum", "pipe fryum"),
    ("bracket_black", "black bracket"), ("metal_plate", "metal plate"), ("bottle", "bottle"),
    ("capsules", "capsules"), ("Toothbrush", "toothbrush"),
])
def test_category_object_name(category, words):
    assert category_object_name(category) == words


def test_the_registry_passes_the_category_to_winclip_only(monkeypatch):
    """``category`` is a host keyword: winclip turns it into its prompts' noun (unless
    object_name is given); a factory that does not take it never sees it."""
    monkeypatch.setattr("fader_kit_plugins.winclip.build_winclip", lambda config: config)
    from fader_kit_plugins import patch_stats, winclip

    reg = MaskerRegistry(entry_points=[], extra_plugins=[winclip, patch_stats])
    offered = {"category": "metal_nut", "device": "cpu"}
    assert reg.factory_options("winclip", offered) == offered
    assert reg.factory_options("patch_stats", offered) == {}
    assert reg.get("winclip").factory(**offered).object_name == "metal nut"
    assert winclip.make_winclip(category="pcb2").object_name == "printed circuit board"
    assert winclip.make_winclip(category="pcb2", object_name="board").object_name == "board"
