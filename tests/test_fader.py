import math

import pytest
import torch

from fader_kit.model.config import FaderConfig, UNetConfig
from fader_kit.model.fader import (
    FaderHead, FaderModel, ViTHead, hard_mask, patch_errors, patchify, ranking_loss, soft_mask, theta, wrap_with_fader,
)
from fader_kit.maskers.interfaces import Reconstructor
from fader_kit.model.unet import EARUNet


def test_patchify_orders_tokens_row_major():
    x = torch.zeros(1, 3, 4, 4)
    x[0, :, 0:2, 2:4] = 1.0  # top-right patch of a 2x2 grid
    tokens = patchify(x, 2)
    assert tokens.shape == (1, 4, 12)
    assert tokens.sum(dim=2).tolist() == [[0.0, 12.0, 0.0, 0.0]]


def test_patch_errors_are_patch_mse():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.zeros(1, 3, 4, 4)
    b[0, 0, 3, 3] = 2.0  # one pixel, one channel of the bottom-right patch: (4/3)/4 = 1/3
    assert torch.allclose(patch_errors(a, b, 2), torch.tensor([[0.0, 0.0, 0.0, 1 / 3]]))


def test_ranking_loss_hand_values():
    pred = torch.tensor([[0.5, 0.1, 0.3]])
    target = torch.tensor([[3.0, 1.0, 2.0]])
    # pairs (0,1): relu(-0.4+0.3)=0; (0,2): relu(-0.2+0.3)=0.1; (1,2): l1<l2 -> relu(+(0.1-0.3)+0.3)=0.1
    assert math.isclose(float(ranking_loss(pred, target, margin=0.3)), 0.2 / 3, rel_tol=1e-6)
    # reversed predictions are punished: every pair contributes |diff| + margin
    assert math.isclose(float(ranking_loss(-pred, target, margin=0.0)), (0.4 + 0.2 + 0.2) / 3, rel_tol=1e-6)
    # equal ground truth counts as "otherwise" (-1): wants l_hat_i < l_hat_j
    assert math.isclose(float(ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), 0.0)), 1.0)


def test_sampled_ranking_loss_is_reproducible_and_avoids_self_pairs():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 50, generator=g), torch.rand(2, 50, generator=g)
    a = ranking_loss(pred, target, 0.1, pairs=64, generator=torch.Generator().manual_seed(3))
    b = ranking_loss(pred, target, 0.1, pairs=64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # self-pairs would add exactly `margin` each; with identical pred, every pair gives margin
    same = ranking_loss(torch.zeros(1, 5), torch.arange(5.0)[None], 0.2, pairs=100, generator=g)
    assert math.isclose(float(same), 0.2, rel_tol=1e-6)


def test_soft_mask_extremes_and_hard_mask():
    pred = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    pred_hard = torch.tensor([[0.1, 0.9, 0.45, 0.3]])
    ms = soft_mask(pred)
    assert torch.allclose(ms, torch.tensor([[1.0, 0.0, 0.5, 0.75]]), atol=1e-6)
    assert int(ms.argmin()) == int(pred.argmax()) and int(ms.argmax()) == int(pred.argmin())
    sig = soft_mask(pred, "sigmoid")
    assert torch.equal(sig.argsort(), ms.argsort()) and float(sig.min()) > 0 and float(sig.max()) < 1
    assert hard_mask(pred_hard, 0.5).tolist() == [[1.0, 0.0, 1.0, 1.0]]  # norm .4375 stays open


def test_theta_nearest_and_bilinear():
    grid = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    up = theta(grid, (4, 4), "nearest")
    assert torch.equal(up[0, 0, :2, 2:], torch.zeros(2, 2)) and torch.equal(up[0, 0, 2:, :2], torch.full((2, 2), 0.5))
    down = theta(torch.ones(1, 1, 4, 4).index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([3]), torch.tensor([1])), torch.tensor(0.0)), (2, 2), "nearest")
    assert down[0, 0, 1, 0] == 0.0 and down.sum() == 3.0  # a suspected patch is never dropped
    bil = theta(grid, (4, 4), "bilinear")
    assert 0.0 < float(bil[0, 0, 1, 1]) < 1.0  # smoothed border


def _small(head: str = "mlp") -> FaderModel:
    torch.manual_seed(0)
    cfg = FaderConfig(patch_size=8, hidden=8, head=head, vit_dim=16, vit_depth=1, vit_heads=2)
    return wrap_with_fader(EARUNet(UNetConfig(widths=(4, 8, 8, 8, 8))), None, cfg).eval()


@pytest.mark.parametrize("head", ["mlp", "vit"])
def test_fader_forward_shapes_and_gradient_reaches_head(head):
    model = _small(head)
    assert isinstance(model.head, FaderHead if head == "mlp" else ViTHead)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.soft_mask.shape == (2, 1, 8, 8) and out.predicted_error.shape == (2, 64)
    assert torch.equal(out.obfuscated, x)  # no masker: nothing obfuscated
    out.reconstruction.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters() if p.ndim > 1)


def test_plain_ear_shares_reconstructor_and_has_no_gates():
    model = _small()
    ear = model.without_head()
    x = torch.rand(1, 3, 64, 64)
    out = ear(x)
    assert out.soft_mask is None and out.predicted_error is None
    assert torch.allclose(out.reconstruction, model.reconstructor(x))


def test_binary_mask_is_applied_before_everything():
    model = _small()
    x = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., :8, :8] = True
    out = model(x, mask)
    assert torch.allclose(out.obfuscated[..., :8, :8], x[..., :8, :8].mean(dim=(-1, -2), keepdim=True).expand(1, 3, 8, 8))
    assert torch.equal(out.obfuscated[..., 8:, :], x[..., 8:, :])


def test_save_and_load_round_trip(tmp_path):
    model = _small()
    x = torch.rand(2, 3, 64, 64)
    path = model.save(tmp_path / "m.pt")
    again = FaderModel.load(path)
    assert not again.training  # ready to score: a train-mode load would score with batch statistics
    stats = [b.clone() for b in again.buffers()]
    assert torch.equal(model.score(x), again.score(x))
    assert all(torch.equal(a, b) for a, b in zip(stats, again.buffers()))  # scoring never updates BN statistics
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        FaderModel.load(tmp_path / "nothing.pt")


def test_wrap_rejects_non_reconstructors():
    with pytest.raises(TypeError, match="Reconstructor"):
        wrap_with_fader(torch.nn.Linear(2, 2), None)


def test_scoring_uses_running_statistics_whatever_the_mode():
    model = _small().train()
    x = torch.rand(4, 3, 64, 64)
    stats = [b.clone() for b in model.buffers()]
    in_train_mode = model.score(x)
    assert model.training  # the caller's mode is restored
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    # one image scores the same alone as in a batch: no batch statistics involved
    assert torch.allclose(model.score(x[:1]), in_train_mode[:1], atol=1e-5)
    assert torch.allclose(model.eval().score(x), in_train_mode)


class _TwoPartReconstructor(Reconstructor):
    """A custom reconstructor whose encoder is not a child called `encoder`: freezing must follow
    encoder_modules(), not the module layout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.down = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4))
        self.up = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.out = torch.nn.Conv2d(4, 3, 1)

    @property
    def depth(self) -> int:
        return 2

    def encoder_modules(self):
        return [self.stem, self.down]

    def encode(self, x):
        a = self.stem(x)
        return [a, self.down(a)]

    def decode(self, feats, skip_gates=None):
        a, b = feats
        if skip_gates is not None:
            a = a * skip_gates[0]
        up = torch.nn.functional.interpolate(b, scale_factor=2.0)
        return torch.sigmoid(self.out(self.up(torch.cat([up, a], 1))))


def test_custom_reconstructor_encoder_is_frozen_and_callers_freezing_is_kept():
    from fader_kit.model.config import TrainConfig
    from fader_kit.model.training import train_fader

    rec = _TwoPartReconstructor()
    rec.out.weight.requires_grad_(False)  # the caller froze the output layer: it must stay frozen
    model = wrap_with_fader(rec, None, FaderConfig(patch_size=8, hidden=8))
    enc = [t.clone() for m in rec.encoder_modules() for t in [*m.parameters(), *m.buffers()]]
    up = [p.clone() for p in rec.up.parameters()]
    out_w = rec.out.weight.clone()
    train_fader(model, torch.rand(8, 3, 32, 32), None, TrainConfig(epochs=1, batch_size=4, ranking_pairs=32), seed=0)
    after = [t for m in rec.encoder_modules() for t in [*m.parameters(), *m.buffers()]]
    assert all(torch.equal(a, b) for a, b in zip(enc, after))  # weights and BN statistics
    assert any(not torch.equal(a, b) for a, b in zip(up, rec.up.parameters()))  # the decoder learned
    assert torch.equal(out_w, rec.out.weight) and not rec.out.weight.requires_grad
    assert all(p.requires_grad for m in rec.encoder_modules() for p in m.parameters())  # restored


def test_reconstructor_without_encoder_modules_gets_a_clear_error():
    class NoEncoder(_TwoPartReconstructor):
        encoder_modules = Reconstructor.encoder_modules

    with pytest.raises(NotImplementedError, match="NoEncoder must implement encoder_modules"):
        NoEncoder().encoder_parameters()


# -- head variants beyond the paper ---------------------------------------------------------------
def test_calibrated_gates_stay_open_on_normal_levels_and_close_above():
    from fader_kit.model.fader import calibration_from

    normal = torch.linspace(0.0, 1.0, 1001)[None]  # predictions of normal patches
    cal = calibration_from(normal, quantile=0.9, width=2.0)
    assert torch.allclose(cal, torch.tensor([0.9, 0.5 + 2 * 0.4]), atol=1e-4)  # start = q90, end = median + 2 (q - median)
    # a normal image whose patches stay within the normal range keeps every skip open (min-max would close one)
    image = torch.tensor([[0.2, 0.5, 0.85]])
    assert torch.equal(soft_mask(image, "calibrated", cal), torch.ones(1, 3))
    assert float(soft_mask(image, "minmax").min()) == 0.0
    # above the normal range the gate closes linearly, reaching 0 at `end`
    hot = torch.tensor([[0.9, 1.1, 1.3, 5.0]])
    assert torch.allclose(soft_mask(hot, "calibrated", cal), torch.tensor([[1.0, 0.5, 0.0, 0.0]]), atol=1e-4)
    with pytest.raises(ValueError, match="calibration"):
        soft_mask(hot, "calibrated", None)


def test_calibrated_model_needs_calibration_and_saves_it(tmp_path):
    cfg = FaderConfig(patch_size=8, hidden=8, normaliser="calibrated")
    model = wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), None, cfg)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mb = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="calibrate"):
        model.head_outputs(x, mb)
    cal = model.calibrate(x)
    _, gates = model.head_outputs(x, mb)
    assert float(gates.mean()) > 0.99  # the training images themselves are normal: (nearly) all open
    loaded = FaderModel.load(model.save(tmp_path / "m.pt"))
    assert torch.equal(loaded.calibration, cal)
    # the paper's model has no calibration in its checkpoint
    assert "calibration" not in wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), None, FaderConfig()).state_dict()


def test_neighbour_context_tokens_hold_the_patch_at_their_centre():
    from fader_kit_experiments.inputs import context_tokens

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plain, ctx = patchify(x, 4), context_tokens(x, 4)
    model = wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), None,
                            FaderConfig(patch_size=4, hidden=8, head_input=("neighbours",)))
    assert ctx.shape == (2, 16, 3 * 12 * 12) == (2, 16, model.head.net[0].in_features)
    centre = ctx.reshape(2, 16, 3, 12, 12)[..., 4:8, 4:8].reshape(2, 16, -1)
    assert torch.equal(centre, plain)
    assert model(x, torch.zeros(2, 1, 16, 16, dtype=torch.bool)).predicted_error.shape == (2, 16)


def test_pseudo_anomalies_change_only_the_pasted_area():
    from fader_kit.model.training import paste_pseudo_anomalies

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out, region = paste_pseudo_anomalies(x, 1.0, 0.04, torch.Generator().manual_seed(0))
    assert torch.equal(out[~region.expand_as(out)], x[~region.expand_as(x)])
    assert region.flatten(1).sum(1).tolist() == [36] * 4  # 6 x 6 = round(32 * 0.2)^2 per image
    assert not torch.equal(out[region.expand_as(out)], x[region.expand_as(x)])
    none, region0 = paste_pseudo_anomalies(x, 0.0, 0.04, torch.Generator().manual_seed(0))
    assert torch.equal(none, x) and not region0.any()


def test_procedural_pseudo_anomalies_paste_content_foreign_to_the_batch():
    """On a batch of flat grey images, a square of another image would be flat too (shifted in colour);
    the procedural source pastes textured content, seeded, and only inside the region."""
    from fader_kit.model.training import paste_pseudo_anomalies

    x = torch.full((3, 3, 64, 64), 0.5)
    out, region = paste_pseudo_anomalies(x, 1.0, 0.04, torch.Generator().manual_seed(0), source="procedural")
    again, _ = paste_pseudo_anomalies(x, 1.0, 0.04, torch.Generator().manual_seed(0), source="procedural")
    assert torch.equal(out, again)
    assert torch.equal(out[~region.expand_as(out)], x[~region.expand_as(x)])
    pasted = out[region.expand_as(out)].reshape(3, 3, -1)
    assert float(pasted.std(dim=2).mean()) > 0.02  # texture, not a flat colour
    image, where = paste_pseudo_anomalies(x, 1.0, 0.04, torch.Generator().manual_seed(0), source="image")
    assert float(image[where.expand_as(image)].reshape(3, 3, -1).std(dim=2).max()) < 1e-6
    with pytest.raises(ValueError, match="pseudo-anomaly source"):
        paste_pseudo_anomalies(x, 1.0, 0.04, torch.Generator(), source="dtd")


def test_target_switch_takes_the_error_of_the_ungated_reconstruction():
    from fader_kit.model.training import error_target

    torch.manual_seed(0)
    base = EARUNet(UNetConfig(widths=(4, 4, 8))).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mb = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    gated = wrap_with_fader(base, None, FaderConfig(patch_size=8, hidden=8)).eval()
    ungated = FaderModel(base, None, FaderConfig(patch_size=8, hidden=8, target="ungated"), head=gated.head).eval()
    out = gated(x, mb)
    plain = patch_errors(x, gated.without_head()(x, mb).reconstruction, 8)
    assert torch.allclose(error_target(ungated, x, out), plain)
    assert torch.allclose(error_target(gated, x, out), patch_errors(x, out.reconstruction, 8))
    assert not torch.allclose(error_target(gated, x, out), plain)  # min-max closes a skip: the targets differ


def test_train_fader_with_pseudo_anomalies_ends_calibrated_and_keeps_normal_skips_open():
    from fader_kit.model.config import TrainConfig

    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    cfg = FaderConfig(patch_size=8, hidden=8, normaliser="calibrated", pseudo_anomalies=1.0, target="ungated")
    model = wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), None, cfg)
    model.fit(x, None, TrainConfig(epochs=2, batch_size=3, ranking_pairs=32), seed=0)
    assert torch.isfinite(model.calibration).all() and model.calibration[1] > model.calibration[0]
    _, gates = model.head_outputs(x, torch.zeros(6, 1, 32, 32, dtype=torch.bool))
    assert float((gates == 1).float().mean()) > 0.95  # calibrated on these very images: at most the top 0.5 % close


def test_named_head_variants_and_the_evaluate_argument():
    from fader_kit.cli.main import build_parser
    from fader_kit.model.variants import HEAD_VARIANTS
    from fader_kit.model.variants import resolve as fader_variant

    base = FaderConfig(hidden=16)
    assert fader_variant(base, "paper") == base  # the paper's head, unchanged
    assert fader_variant(base, "pseudo_calibrated").normaliser == "calibrated"
    assert fader_variant(base, "pseudo_calibrated").hidden == 16  # the profile's other fields stay
    with pytest.raises(ValueError, match="unknown FADeR variant 'nope'"):
        fader_variant(base, "nope")
    parser = build_parser()
    from fader_kit.model.variants import DEFAULT_HEAD_VARIANT

    assert DEFAULT_HEAD_VARIANT in HEAD_VARIANTS and DEFAULT_HEAD_VARIANT != "open_gates"  # the control is no head
    assert parser.parse_args(["evaluate", "--category", "washer"]).fader_variant == DEFAULT_HEAD_VARIANT
    for name in HEAD_VARIANTS:
        assert parser.parse_args(["evaluate", "--category", "washer", "--fader-variant", name]).fader_variant == name
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--category", "washer", "--fader-variant", "nope"])


def test_ranking_loss_over_valid_patches_only():
    from fader_kit.model.fader import unmasked_patches

    pred = torch.tensor([[0.5, 0.1, 0.3]])
    target = torch.tensor([[3.0, 1.0, 2.0]])
    valid = torch.tensor([[True, True, False]])
    # only the pair (0, 1) counts: l_0 > l_1 and l_hat_0 - l_hat_1 = 0.4, so max(0, -0.4 + 0.5) = 0.1
    assert math.isclose(float(ranking_loss(pred, target, 0.5, valid=valid)), 0.1, rel_tol=1e-6)
    assert math.isclose(float(ranking_loss(pred, target, 0.5)), (0.1 + 0.3 + 0.3) / 3, rel_tol=1e-6)
    # sampled pairs: an all-valid mask changes nothing, an empty one gives 0 (no pair to learn from)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert float(ranking_loss(pred, target, 0.5, 32, g(), valid=torch.ones(1, 3, dtype=torch.bool))) == \
        pytest.approx(float(ranking_loss(pred, target, 0.5, 32, g())))
    assert float(ranking_loss(pred, target, 0.5, 32, g(), valid=torch.zeros(1, 3, dtype=torch.bool))) == 0.0
    mb = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mb[0, 0, 1, 3] = True  # one pixel in the top-right 2x2 patch
    assert unmasked_patches(mb, 2).tolist() == [[True, False, True, True]]


def test_open_gates_control_reconstructs_exactly_like_plain_ear():
    unet = EARUNet(UNetConfig(widths=(4, 4, 8)))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mb = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mb[:, :, 8:16, 8:16] = True
    model = wrap_with_fader(unet, None, FaderConfig(patch_size=8, hidden=8, gates=("open",))).eval()
    out = model(x, mb)
    assert torch.equal(out.soft_mask, torch.ones(2, 1, 4, 4))
    assert torch.allclose(out.reconstruction, model.without_head()(x, mb).reconstruction, atol=1e-6)
    paper = wrap_with_fader(unet, None, FaderConfig(patch_size=8, hidden=8)).eval()
    assert not torch.allclose(paper(x, mb).reconstruction, out.reconstruction)  # min-max closes some skip


def test_focused_calibration_ignores_masked_patches():
    """A masked patch is a flat mosaic cell the head scores high; with focus='unmasked' it does not
    move the calibration, so the level is set by the patches the gates must judge."""
    from fader_kit.model.fader import calibration_from, unmasked_patches

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mb = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    mb[:, :, :16, :16] = True  # the top-left 2x2 of the 4x4 patch grid is masked
    pred = torch.arange(16.0) * 0.01
    pred[[0, 1, 4, 5]] += 10.0  # the head scores the masked (flat) patches high
    cals = {}
    for focus in ("all", "unmasked"):
        cfg = FaderConfig(patch_size=8, hidden=8, normaliser="calibrated", focus=focus)
        model = wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), None, cfg)
        model.predict_errors = lambda obf: pred.expand(obf.shape[0], -1)
        cals[focus] = model.calibrate(x, mb)
    keep = unmasked_patches(mb, 8)
    assert int(keep.sum()) == 4 * 12 and not keep[:, [0, 1, 4, 5]].any()
    batch = pred.expand(4, -1)
    assert torch.allclose(cals["unmasked"], calibration_from(batch[keep]))
    assert torch.allclose(cals["all"], calibration_from(batch))
    assert cals["all"][0] > 5 > cals["unmasked"][0]  # the masked patches' 10s set the level only with 'all'


def test_fit_without_masks_uses_the_wrapped_maskers_masks_and_a_misplaced_config_is_named(monkeypatch):
    from fader_kit.model.config import TrainConfig
    from fader_kit.maskers.interfaces import Masker, MaskerInfo
    import fader_kit.model.training as training

    class Corner(Masker):
        info = MaskerInfo(name="corner", weights="none")

        def score_map(self, images):
            out = torch.zeros(images.shape[0], 1, *images.shape[-2:])
            out[..., :8, :8] = 1.0
            return out

        def mask(self, images):
            return self.score_map(images) > 0.5

    seen = {}
    monkeypatch.setattr(training, "train_fader", lambda model, images, masks, *a, **k: seen.setdefault("m", masks))
    model = wrap_with_fader(EARUNet(UNetConfig(widths=(4, 4, 8))), Corner(), FaderConfig(patch_size=8, hidden=8))
    x = torch.rand(3, 3, 32, 32)
    model.fit(x)
    assert seen["m"].shape == (3, 1, 32, 32) and seen["m"][:, :, :8, :8].all() and not seen["m"][:, :, 8:].any()
    monkeypatch.undo()
    with pytest.raises(TypeError, match="train_config="):
        model.fit(x, TrainConfig(epochs=1))
