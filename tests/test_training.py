import pytest
import torch

from fader_kit.config import FaderConfig, TrainConfig, UNetConfig
from fader_kit.fader import wrap_with_fader
from fader_kit.training import make_scheduler, random_blobs, seeded_init, ssim, train_fader, train_reconstructor
from fader_kit.unet import EARUNet

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
    x = _images().repeat(2, 1, 1, 1)
    unet = seeded_init(lambda: EARUNet(UNET), 0)
    hist = train_reconstructor(unet, x, None, TrainConfig(epochs=4, batch_size=8, lr=5e-3, random_blobs=False), patch_size=8, seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"]


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


@pytest.mark.parametrize("schedule", ["fixed", "warmup", "sgdr"])
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
    else:
        assert lrs[0] == 1.0 and lrs[1] < 1.0 and lrs[2] == 1.0  # restart after T_0 = 2 steps
