"""Round-3 head options: feature inputs, the masker's score as input, score gates, masked gate = 1,
and the frozen-EAR target (smoke sizes).  All but the encoder input are strategies of the
experiments plugin (fader_kit_experiments)."""
import pytest
import torch

from fader_kit.model.config import FaderConfig, TrainConfig, UNetConfig
from fader_kit.errors import UserError
from fader_kit.model.fader import FaderModel, calibration_from, encoder_tokens
from fader_kit.model.training import train_fader
from fader_kit.model.unet import EARUNet
from fader_kit.model.variants import head_strategies, resolve
from fader_kit_experiments.inputs import STATS_DIM, patch_statistics, score_tokens

BASE = FaderConfig(patch_size=8, hidden=16)
TRAIN = dict(epochs=1, batch_size=4, lr=1e-3, ranking_pairs=64)


def _model(variant: str) -> FaderModel:
    torch.manual_seed(0)
    return FaderModel(EARUNet(UNetConfig(widths=(4, 8, 8, 8, 8))), None, resolve(BASE, variant))


def _data(n: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    mb = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
    mb[:, :, :8, :8] = True
    scores = torch.rand(n, 1, 32, 32, generator=g)
    return x, mb, scores


def test_patch_statistics_by_hand():
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0, :8, :8] = 1.0                 # patch 0: red, flat
    x[:, 1, :8, 8:] = torch.arange(8.0).repeat(8, 1) / 8  # patch 1: a green ramp
    s = patch_statistics(x, 8)
    assert s.shape == (1, 4, STATS_DIM)
    assert s[0, 0, :3].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert s[0, 0, 3:6].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-3)
    assert s[0, 1, 1] == pytest.approx(3.5 / 8)
    assert s[0, 1, 6] > 0 and s[0, 3, 6] == pytest.approx(0.0, abs=1e-3)


def test_encoder_and_score_tokens_shapes():
    feats = [torch.rand(2, c, 32 // 2 ** (i + 1), 32 // 2 ** (i + 1)) for i, c in enumerate((4, 8, 8, 8, 8))]
    assert encoder_tokens(feats, 8, (4, 4)).shape == (2, 16, 8)
    s = torch.zeros(2, 1, 32, 32)
    s[0, 0, 0, 0] = 4.0
    t = score_tokens(s, 8)
    assert t.shape == (2, 16, 2) and t[0, 0].tolist() == pytest.approx([4.0 / 64, 4.0])


@pytest.mark.parametrize("variant", ["stats_ear", "encoder_ear", "stats_score_ear", "backbone_ear"])
def test_feature_heads_train_and_round_trip(variant, tmp_path):
    x, mb, scores = _data()
    model = _model(variant)
    train_fader(model, x, mb, TrainConfig(**TRAIN), scores=scores)
    assert torch.isfinite(model.calibration).all()
    assert not torch.equal(model.head.input_scale, torch.ones_like(model.head.input_scale))  # standardised
    # a gradient reaches the head's first layer
    model.train()
    pred = model.predict_errors(x, scores=scores if model.needs_scores else None)
    pred.sum().backward()
    assert model.head.net[0].weight.grad is not None and model.head.net[0].weight.grad.abs().sum() > 0
    out = model.anomaly_map(x, mb, scores=scores)
    loaded = FaderModel.load(model.save(tmp_path / "m.pt"))
    assert loaded.config == model.config
    assert torch.allclose(loaded.anomaly_map(x, mb, scores=scores), out, atol=1e-6)


def test_backbone_tokens_read_the_pretrained_backbone_at_the_patch_grid():
    from fader_kit.maskers.backbones import create_feature_extractor
    from fader_kit_experiments.inputs import HEAD_BACKBONE_STAGES, backbone_tokens

    model = _model("backbone_ear")
    ref, source = create_feature_extractor("tf_efficientnet_lite0", HEAD_BACKBONE_STAGES)
    assert source.startswith("package:")  # the offline ImageNet weights, not a random backbone
    for (name, a), b in zip(model.head_backbone.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(2, 3, 64, 64)
    tokens = backbone_tokens(model.head_backbone, x, (8, 8))
    assert tokens.shape == (2, 64, 40 + 112) == (2, 64, model.head.net[0].in_features)
    # the stride-8 stage needs no resizing: token (row 2, col 3) is that stage's feature at (2, 3)
    stride8 = ref(x)[0]
    assert torch.allclose(tokens[:, 2 * 8 + 3, :40], stride8[:, :, 2, 3])
    assert not any(p.requires_grad for p in model.head_backbone.parameters())


def test_a_saved_backbone_head_loads_without_the_weights_package(tmp_path, monkeypatch):
    """The checkpoint holds the backbone's weights: loading it neither needs nor reads the package."""
    import fader_kit.maskers.backbones as backbones

    x, mb, _ = _data()
    model = _model("backbone_ear")
    train_fader(model, x, mb, TrainConfig(**TRAIN))
    path = model.save(tmp_path / "m.pt")
    monkeypatch.setattr(backbones, "lite0_package_file", lambda: None)
    with pytest.raises(backbones.MissingWeightsError):
        _model("backbone_ear")  # a new head does need the pretrained weights
    loaded = FaderModel.load(path)
    for (name, a), b in zip(loaded.head_backbone.state_dict().items(), model.head_backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.allclose(loaded.anomaly_map(x, mb), model.anomaly_map(x, mb), atol=1e-6)


def test_gates_can_end_at_the_masker_threshold():
    normal = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    assert calibration_from(normal, 0.9, 2.0, end=1.1).tolist() == pytest.approx([0.9, 1.1])
    start, end = calibration_from(normal, 0.9, 2.0, end=0.5).tolist()  # at or below start: a step
    assert start == pytest.approx(0.9) and 0.9 < end < 0.9 + 1e-5
    x, mb, scores = _data()
    model = _model("score_gates_threshold")
    assert model.config.gates == ("score", "threshold_end") and model.strategies.reads_threshold
    with pytest.raises(UserError, match="threshold"):
        model.calibrate(x, mb, scores=scores)
    cal = model.calibrate(x, mb, scores=scores, threshold=5.0)
    assert cal[1] == 5.0 and cal[0] < 1.0
    with pytest.raises(ValueError, match="calibrated"):
        head_strategies(FaderConfig(**{**resolve(BASE, "score_gates_threshold").model_dump(), "normaliser": "minmax"}))


def test_score_head_without_scores_is_a_user_error():
    x, mb, _ = _data()
    model = _model("stats_score_ear")
    with pytest.raises(UserError, match="score map"):
        model.anomaly_map(x, mb)


def test_score_gates_follow_the_hand_computed_curve():
    x, mb, _ = _data()
    model = _model("score_gates")
    normal = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    cal = calibration_from(normal, 0.9, 2.0)  # start 0.9, median 0.5 -> end 1.3
    assert cal.tolist() == pytest.approx([0.9, 1.3])
    model.calibration.copy_(cal)
    scores = torch.zeros(1, 1, 32, 32)
    for k, v in enumerate((0.5, 0.9, 1.1, 1.3)):  # the max of patch (0, k)
        scores[0, 0, 1, 8 * k + 3] = v
    _, gates = model.head_outputs(x[:1], torch.zeros(1, 1, 32, 32, dtype=torch.bool), scores)
    assert gates[0, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0], abs=1e-5)
    assert gates[0, 0, 1:].min() == 1.0


def test_masked_gate_one_opens_masked_patches():
    x, mb, scores = _data()
    model = _model("score_gates_one")
    model.calibration.copy_(torch.tensor([0.0, 0.1]))  # every patch with a score above 0.1 closes
    _, gates = model.head_outputs(x, mb, scores)
    assert (gates[:, 0, 0, 0] == 1).all() and gates[:, 0, 1:, 1:].max() < 1


def test_score_gates_train_the_decoder_only(tmp_path):
    x, mb, scores = _data()
    model = _model("score_gates")
    before = [p.clone() for p in model.head.parameters()]
    train_fader(model, x, mb, TrainConfig(**TRAIN), scores=scores)
    assert all(torch.equal(a, b) for a, b in zip(before, model.head.parameters()))
    with pytest.raises(UserError):
        train_fader(_model("score_gates"), x, mb, TrainConfig(**TRAIN))


def test_ear_target_is_the_frozen_eval_error():
    from fader_kit.model.config import TrainConfig
    from fader_kit.model.fader import patch_errors
    from fader_kit.model.training import error_target

    x, mb, _ = _data()
    model = _model("ear_target")
    ref = EARUNet(UNetConfig(widths=(4, 8, 8, 8, 8))).eval()
    out = model(x, mb)
    t = error_target(model, x, out, ref)
    with torch.no_grad():
        assert torch.allclose(t, patch_errors(x, ref(out.obfuscated), 8))
    train_fader(model, x, mb, TrainConfig(**TRAIN))  # runs with its own frozen copy


def test_new_switches_keep_old_keys():
    assert "head_input" not in resolve(BASE, "paper").key_payload()
    assert resolve(BASE, "stats_ear").key_payload()["head_input"] == "stats"


@pytest.mark.parametrize("variant", ["score_gates_one", "encoder_ear_one"])
def test_gate_variants_round_trip(variant, tmp_path):
    x, mb, scores = _data()
    model = _model(variant)
    train_fader(model, x, mb, TrainConfig(**TRAIN), scores=scores)
    out = model.anomaly_map(x, mb, scores=scores)
    loaded = FaderModel.load(model.save(tmp_path / "m.pt"))
    assert loaded.config == model.config and loaded.config.gates[-1] == "masked_one"
    assert torch.allclose(loaded.anomaly_map(x, mb, scores=scores), out, atol=1e-6)


def test_the_workbench_passes_the_masker_scores(tmp_path):
    """A head that reads the masker's score map trains and scores through the benchmark grid."""
    from fader_kit.cli.main import main
    from fader_kit.engine.store import ResultStore

    assert main(["bench", "fader_head", "--data", "synthetic", "--profile", "smoke", "--categories", "washer",
                 "--maskers", "patch_stats", "--variants", "ear,score_gates,stats_score_ear,score_gates_threshold",
                 "--seeds", "0", "--fused", "pseudo",
                 "--figures", "1", "--no-report", "--quiet", "--out", str(tmp_path)]) == 0
    rows = {r.unit.variant: r for r in ResultStore.open_existing(tmp_path).rows()}
    assert set(rows) == {"ear", "score_gates", "stats_score_ear", "score_gates_threshold"}
    assert rows["score_gates"].config["diagnostics"]["head"]["auroc_unmasked_defect"] is not None
    assert rows["score_gates_threshold"].status == "ok"
    # the figure panel feeds the masker's scores to the heads that read them
    assert all(rows[v].status == "ok" and rows[v].config["figure"] for v in ("score_gates", "stats_score_ear"))
    # the fused score's mix chosen on pseudo-anomalies of the training images, recorded with the row
    fusion = rows["ear"].config["fusion"]
    assert fusion["rule"] == "weighted" and fusion["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert rows["ear"].config["fused"]["image_auroc"] is not None


def test_the_fusion_rule_is_in_the_row_key_unless_it_is_the_earlier_sum():
    from fader_kit.model.config import get_profile
    from fader_kit.engine.keys import digest, work_key
    from fader_kit.model.fusion import DEFAULT_FUSION_RULE

    common = dict(ear="e", masker="m", fader=None, profile=get_profile("smoke"), seed=0)
    plain = {"ear": "e", "masker": "m", "seed": 0, "image_size": 64, "fader": None, "fader_train": None}
    assert work_key(**common) == digest(plain)
    assert work_key(**common, fused="sum") == digest({**plain, "fused": True})  # the key sum rows always had
    assert work_key(**common, fused=True) == work_key(**common, fused=DEFAULT_FUSION_RULE)
    assert len({work_key(**common, fused=r) for r in ("sum", "max", "select", "pseudo")}) == 4
