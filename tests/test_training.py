import pytest
import torch

from fader_kit.model.config import FaderConfig, TrainConfig, UNetConfig
from fader_kit.model.fader import wrap_with_fader
from fader_kit.model.training import make_scheduler, random_blobs, seeded_init, ssim, train_fader, train_reconstructor
from fader_kit.model.unet import EARUNet

UNET = UNetConfig(widths=(4, 8, 8, 8, 8))
HEAD = FaderConfig(patch_size=8, hidden=8)
EAR = TrainConfig(epochs=1, batch_size=4, lr=1e-3)
FADER = TrainConfig(epochs=1, batch_size=4, lr=1e-3, ranking_pairs=64)


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _run(seed: int):
    x = _images()
    unet = seeded_init(lambda: EARUNet(UNET), seed)
    ear_hist = train_reconstructor(unet, x, None, EAR, patch_size=8, seed=seed)
    model = seeded_init(lambda: wrap_with_fader(unet, None, HEAD), seed + 1)
    fader_hist = train_fader(model, x, None, FADER, seed=seed)
    return ear_hist, fader_hist, model.score(x)


def test_same_seed_same_numbers_and_other_seed_differs():
    a, b, c = _run(0), _run(0), _run(1)
    assert a[0][-1]["loss"] == b[0][-1]["loss"] and a[1][-1]["ranking_loss"] == b[1][-1]["ranking_loss"]
    assert torch.equal(a[2], b[2])
    assert not torch.equal(a[2], c[2])


def test_fader_training_freezes_encoder_and_updates_head_and_decoder():
    x = _images()
    unet = seeded_init(lambda: EARUNet(UNET), 0)
    model = seeded_init(lambda: wrap_with_fader(unet, None, HEAD), 1)
    enc0 = [p.clone() for p in unet.encoder.parameters()]
    enc_stats0 = unet.encoder[0][1].running_mean.clone()
    dec0 = [p.clone() for p in unet.decoder.parameters()]
    head0 = [p.clone() for p in model.head.parameters()]
    train_fader(model, x, None, FADER, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(enc0, unet.encoder.parameters()))
    assert torch.equal(enc_stats0, unet.encoder[0][1].running_mean)  # BN statistics frozen too
    assert any(not torch.equal(a, b) for a, b in zip(dec0, unet.decoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(head0, model.head.parameters()))
    assert all(p.requires_grad for p in unet.parameters())  # restored afterwards


def test_decoder_lr_factor_zero_leaves_decoder_untouched():
    x = _images()
    unet = seeded_init(lambda: EARUNet(UNET), 0)
    model = seeded_init(lambda: wrap_with_fader(unet, None, HEAD), 1)
    dec0 = [p.clone() for p in unet.decoder.parameters()]
    train_fader(model, x, None, FADER.model_copy(update={"decoder_lr_factor": 0.0}), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(dec0, unet.decoder.parameters()))


def test_reconstructor_learns_identity_task():
    x = _smooth_images(16, 0)
    unet = seeded_init(lambda: EARUNet(UNET), 0)
    with torch.no_grad():
        before = float(((unet.eval()(x) - x) ** 2).mean())
    cfg = TrainConfig(epochs=10, batch_size=4, lr=1e-2, random_blobs=False, schedule="cosine")
    hist = train_reconstructor(unet, x, None, cfg, patch_size=8, seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    with torch.no_grad():  # the model as it is used: eval mode, running statistics
        after = float(((unet(x) - x) ** 2).mean())
    assert after < 0.6 * before


def test_random_blobs_cover_about_the_requested_fraction_and_are_seeded():
    a = random_blobs(16, (64, 64), 0.2, torch.Generator().manual_seed(0))
    b = random_blobs(16, (64, 64), 0.2, torch.Generator().manual_seed(0))
    assert a.dtype == torch.bool and a.shape == (16, 1, 64, 64) and torch.equal(a, b)
    frac = a.float().mean(dim=(1, 2, 3))
    assert 0.08 < float(frac.min()) and float(frac.max()) < 0.32  # 0.2 * [0.5, 1.5)


def test_ssim_of_identical_images_is_one():
    x = _images()[:2]
    assert abs(float(ssim(x, x)) - 1.0) < 1e-5
    assert float(ssim(x, 1 - x)) < 0.5


@pytest.mark.parametrize("schedule", ["fixed", "warmup", "sgdr", "cosine"])
def test_schedules(schedule):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(schedule=schedule, warmup_epochs=2, sgdr_period=1), steps_per_epoch=2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "fixed":
        assert lrs == [1.0] * 4
    elif schedule == "warmup":
        assert lrs == [0.25, 0.5, 0.75, 1.0]
    elif schedule == "sgdr":
        assert lrs[0] == 1.0 and lrs[1] < 1.0 and lrs[2] == 1.0  # restart after T_0 = 2 steps
    else:  # warm-up for 2 epochs = 4 steps of the default 10 epochs, then decay
        assert lrs == [0.25, 0.5, 0.75, 1.0]


# -- eval-mode quality: what every AUROC stands on --------------------------------------------------
def _smooth_images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smooth random colour fields: easy to reconstruct, nothing like a defect."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 0.6 + 0.2
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def trained_small_ear():
    train = _smooth_images(48, 0)
    unet = seeded_init(lambda: EARUNet(UNetConfig(widths=(16, 16, 32, 32, 32))), 0)
    cfg = TrainConfig(epochs=12, batch_size=8, lr=5e-3, schedule="cosine", warmup_epochs=1)
    train_reconstructor(unet, train, None, cfg, patch_size=8, seed=0)
    return unet


def test_eval_mode_reconstruction_is_as_good_as_train_mode(trained_small_ear):
    unet = trained_small_ear
    held_out = _smooth_images(16, 1)
    assert not unet.training  # returned ready to score
    with torch.no_grad():
        eval_mse = float(((unet(held_out) - held_out) ** 2).mean())
        unet.train()
        train_mse = float(((unet(held_out) - held_out) ** 2).mean())
        unet.eval()
    assert eval_mse <= 1.5 * train_mse, (eval_mse, train_mse)
    # and it really reconstructs: far better than the image's mean colour (a broken eval-mode
    # U-Net, with stale BatchNorm statistics, did worse than that)
    assert eval_mse < 0.15 * float(held_out.var())


def test_batchnorm_recalibration_is_the_exact_average_over_the_data():
    from fader_kit.model.training import batchnorm_layers, recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    x = torch.rand(12, 3, 5, 5)
    recalibrate_batchnorm(net, batchnorm_layers([net]), lambda a: net(a), [(x[:4],), (x[4:8],), (x[8:],)])
    feats = net[0](x).detach()
    bn = net[1]
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not net.training  # settings restored


def test_cosine_schedule_warms_up_and_ends_at_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(schedule="cosine", epochs=5, warmup_epochs=1), steps_per_epoch=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decays monotonically after warm-up


def test_oracle_masks_make_a_trained_ear_find_constructed_defects(trained_small_ear):
    """Defects the U-Net never saw (a fine checkerboard on a smooth field), masked by the ground
    truth dilated: EAR inpaints a smooth patch there, so MSGMS must separate them from normals."""
    from fader_kit.model.fader import FaderModel
    from fader_kit.model.metrics import image_auroc

    normal = _smooth_images(16, 2)
    defective = _smooth_images(16, 3)
    gt = torch.zeros(16, 1, 64, 64, dtype=torch.bool)
    g = torch.Generator().manual_seed(4)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = (((yy // 2) + (xx // 2)) % 2).float()
    for i in range(16):
        r, c = (int(v) for v in torch.randint(8, 44, (2,), generator=g))
        gt[i, 0, r : r + 12, c : c + 12] = True
        defective[i] = torch.where(gt[i], checker.expand(3, 64, 64), defective[i])
    oracle = torch.nn.functional.max_pool2d(gt.float(), 9, stride=1, padding=4).bool()  # dilated by 4 px
    images = torch.cat([normal, defective])
    masks = torch.cat([torch.zeros_like(gt), oracle])
    scores = FaderModel(trained_small_ear, None, HEAD, head=None).score(images, masks)
    labels = torch.tensor([0] * 16 + [1] * 16)
    assert image_auroc(scores, labels) >= 0.95


def _ssim_five_calls(a, b, window=11, sigma=1.5):
    """SSIM written with five separate depthwise convolutions: the reference the batched form in
    fader_kit.model.training must match bit for bit (values and gradients), so that training numbers do not
    move with it."""
    import torch.nn.functional as F

    from fader_kit.model.training import _gaussian_window

    c = a.shape[1]
    w = _gaussian_window(window, sigma, c, a.device, a.dtype)
    pad = window // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=c)
    mu_b = F.conv2d(b, w, padding=pad, groups=c)
    saa = F.conv2d(a * a, w, padding=pad, groups=c) - mu_a**2
    sbb = F.conv2d(b * b, w, padding=pad, groups=c) - mu_b**2
    sab = F.conv2d(a * b, w, padding=pad, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


@pytest.mark.parametrize("batch", [1, 4])
def test_batched_ssim_is_the_five_call_ssim(batch):
    """The grouped convolution computes the five local means of five separate calls.

    Equal to float32 rounding: which oneDNN kernel runs (and so the last bits of a gradient)
    depends on the CPU, so exact equality is checked on one machine by diffing benchmark rows,
    not here. A wrong mean (a swapped channel, a missing term) moves values by far more than 1e-5.
    """
    g = torch.Generator().manual_seed(batch)
    base = torch.rand(batch, 3, 32, 32, generator=g)
    target = torch.rand(batch, 3, 32, 32, generator=g)
    grads = []
    for fn in (ssim, _ssim_five_calls):
        leaf = base.clone().requires_grad_(True)
        pred = leaf * 0.9  # a non-leaf, as a network output is
        value = 1 - fn(pred, target)
        value.backward()
        grads.append((value.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-7)
