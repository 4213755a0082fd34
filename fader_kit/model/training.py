"""Training loops: the EAR reconstructor and the FADeR head (paper Sec. 3.2 and 4.1).

Both are pure functions of (model, images, masks, config, seed): the seed drives one
``torch.Generator`` for shuffling, random blobs and pair sampling, so the same call gives the
same numbers.  Inputs are normal images; masks are the masker's M_B for those images (or None),
optionally united with random blobs so the U-Net always has something to inpaint.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fader_kit.model.config import TrainConfig
from fader_kit.errors import UserError
from fader_kit.maskers.interfaces import Reconstructor, check_images
from fader_kit.model.losses import _gaussian_window, reconstruction_loss, ssim  # noqa: F401 (public here too)
from fader_kit.model.obfuscation import obfuscate
from fader_kit.model.ranking import patch_errors, ranking_loss, unmasked_patches
from fader_kit.model.trainable import GatedRun, TrainableFader
from fader_kit.model.training_masks import paste_pseudo_anomalies, random_blobs, training_masks  # noqa: F401 (public here too)



# -- schedules ------------------------------------------------------------------------------------
def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Per-batch lr schedule: fixed, linear warm-up (Goyal et al.), SGDR (Loshchilov & Hutter), or
    ``cosine``: linear warm-up, then a single cosine decay that reaches ``final_lr_factor * lr`` at
    the last step.

    ``cosine`` is the default of the trained profiles: a schedule that ends near zero lets the
    weights settle, so the BatchNorm statistics re-estimated after training describe the weights
    that are actually used (with a fixed lr the weights still move at the last step).
    """
    total_warm = config.warmup_epochs * steps_per_epoch
    if config.schedule == "fixed":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.schedule == "warmup":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / max(total_warm, 1))
        )
    if config.schedule == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(config.sgdr_period * steps_per_epoch, 1), T_mult=2
        )
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch
        warm = min(total_warm, max(total - 1, 0))
        floor = config.final_lr_factor

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            span = max(total - 1 - warm, 1)
            progress = min(1.0, (step - warm) / span)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"unknown schedule {config.schedule!r}")


# -- BatchNorm statistics -------------------------------------------------------------------------
def batchnorm_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for root in modules for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm], forward: Callable[..., object],
    batches: Iterable[tuple[Tensor, ...]],
) -> int:
    """Re-estimate the running statistics of ``layers`` as the exact (cumulative) average over
    ``batches`` (each a tuple passed as ``forward(*batch)``; the first item carries the batch
    dimension), with the weights as they are now; everything else runs in eval mode.

    Running statistics collected with momentum during training describe weights that have since
    moved; through ~30 BatchNorm layers the mismatch compounds until an eval-mode reconstruction no
    longer looks like its input.  One pass with ``momentum=None`` fixes the cause.  Returns the
    number of images seen.
    """
    was_training = model.training
    model.eval()
    saved = [(bn, bn.momentum) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
        bn.train()
    seen = 0
    try:
        for batch in batches:
            forward(*batch)
            seen += batch[0].shape[0]
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.train(was_training)
    return seen


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_inputs(images: Tensor, masks: Tensor | None) -> None:
    check_images(images)
    if masks is not None and not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a [N, 1, H, W] tensor or None, got {type(masks).__name__}"
                        + ("; pass the training configuration as train_config=" if isinstance(masks, TrainConfig) else ""))
    if masks is not None and (masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]):
        raise ValueError(f"masks {list(masks.shape)} do not match images {list(images.shape)}")


EpochCallback = Callable[[dict[str, float]], None]


def _training_batches(
    images: Tensor, masks: Tensor | None, config: TrainConfig, generator: torch.Generator, device: torch.device,
    scores: Tensor | None = None,
) -> Iterator[tuple[Tensor, ...]]:
    """One epoch of (images, M_B) batches on ``device``: shuffled, masks united with blobs; with
    ``scores`` (the masker's score maps, aligned with ``images``) each batch also carries its scores."""
    for idx in _batches(images.shape[0], config.batch_size, generator):
        x = images[idx]
        mb = training_masks(masks, idx, x.shape, config, generator)
        if scores is None:
            yield x.to(device), mb.to(device)
        else:
            yield x.to(device), mb.to(device), scores[idx].to(device).float()


def train_reconstructor(
    model: Reconstructor,
    images: Tensor,
    masks: Tensor | None,
    config: TrainConfig,
    *,
    patch_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """EAR training: obfuscated normal images in, the originals as target (L2 + SSIM + MSGMS).

    Ends with :func:`recalibrate_batchnorm` over one more epoch of obfuscated training batches,
    so the model returned (in eval mode) reconstructs as well as it did in train mode.
    """
    _check_inputs(images, masks)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = math.ceil(images.shape[0] / config.batch_size)
    sched = make_scheduler(opt, config, steps)
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.epochs), desc="EAR U-Net", disable=not progress, leave=False)
    for epoch in bar:
        t0, total = time.perf_counter(), 0.0
        for x, mb in _training_batches(images, masks, config, gen, device):
            pred = model(obfuscate(x, mb, patch_size))
            loss = reconstruction_loss(pred, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * x.shape[0]
        row = {"epoch": epoch + 1, "loss": total / images.shape[0], "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if on_epoch:
            on_epoch(row)
    if config.recalibrate_bn:
        recalibrate_batchnorm(
            model, batchnorm_layers([model]), lambda x, mb: model(obfuscate(x, mb, patch_size)),
            _training_batches(images, masks, config, gen, device),
        )
    model.eval()
    return history


def error_target(model: TrainableFader, clean: Tensor, out: GatedRun, reference: nn.Module | None = None) -> Tensor:
    """The ground truth l of Eq. 1 for one training step, ``[B, N]``, detached: the patch MSE between
    the clean image and the gated reconstruction ``out`` (``target="gated"``, the paper's active
    loop), or the reconstruction of the same U-Net with every skip open (``"ungated"``; its decoder is
    the one being fine-tuned), or the reconstruction of ``reference``, a frozen copy of the plain EAR
    U-Net in eval mode (``"ear"``: exactly the errors plain EAR makes, which the gates exist to prevent)."""
    m = model.patch_size
    if model.config.target == "ear":
        if reference is None:
            raise ValueError("target='ear' needs the frozen EAR U-Net (train_fader keeps one)")
        with torch.no_grad():
            return patch_errors(clean, reference(out.obfuscated), m)
    if model.config.target == "ungated":
        with torch.no_grad():
            rec = model.reconstructor
            return patch_errors(clean, rec.decode(rec.encode(out.obfuscated)), m)
    if model.config.target != "gated":
        raise ValueError(f"unknown FADeR target {model.config.target!r}; use 'gated', 'ungated' or 'ear'")
    return patch_errors(clean, out.reconstruction, m).detach()


def train_fader(
    model: TrainableFader, images: Tensor, masks: Tensor | None, config: TrainConfig, *, seed: int = 0,
    device: str | torch.device = "cpu", progress: bool = False, on_epoch: EpochCallback | None = None,
    scores: Tensor | None = None, score_threshold: float | None = None,
) -> list[dict[str, float]]:
    """FADeR training with the active-learning loop of Fig. 4.

    Each step: forward through the gated U-Net; the ground truth l (Eq. 1) is the patch MSE
    between I and the *current* reconstruction, detached; the head learns it through the
    ranking loss (Eq. 3) alone.  The decoder is fine-tuned at ``decoder_lr_factor * lr`` on the
    reconstruction loss with the gates detached, so the decoder cannot push the head towards
    opening every skip; the encoder is frozen.

    Beyond the paper (:class:`~fader_kit.model.config.FaderConfig` fields; paper behaviour by default):
    ``target="ungated"`` takes l against the un-gated reconstruction of the same U-Net, ``target="ear"``
    from a frozen eval-mode copy of the U-Net as it was passed in; ``pseudo_anomalies > 0`` pastes
    foreign patches into the inputs (not into M_B) while l and the decoder's loss stay against the clean
    image; ``normaliser="calibrated"`` calibrates the gates on the training images at each epoch and at
    the end (:meth:`FaderModel.calibrate`); ``focus="unmasked"`` draws Eq. 3's pairs (and the
    calibration) from patches without an M_B pixel only.  ``scores`` (the masker's score maps of
    ``images``, ``[N, 1, H, W]``) feed a head whose strategies read them (:attr:`FaderModel.needs_scores`);
    ``score_threshold`` (the fitted masker's threshold) is passed to a gate strategy that ends there.
    """
    scores = _score_input(model, images, masks, scores)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    rec = model.reconstructor
    encoder = rec.encoder_modules()
    saved_grad = [(p, p.requires_grad) for p in rec.parameters()]  # restored afterwards, as the caller had it
    reference = _ear_reference(rec, device) if model.config.target == "ear" else None
    opt = _fader_optimizer(model, config, device)
    sched = make_scheduler(opt, config, math.ceil(images.shape[0] / config.batch_size))
    calibrated = model.config.normaliser == "calibrated"
    model.fit_input_norm(images, masks, scores, batch_size=config.batch_size)  # no-op for the paper's pixel head
    data = (images, masks, scores)
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.epochs), desc="FADeR head", disable=not progress, leave=False)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            if calibrated:  # the gates the decoder is fine-tuned with follow the current head
                model.calibrate(images, masks, batch_size=config.batch_size, scores=scores, threshold=score_threshold)
                _train_mode(model, encoder)
            tot_rank, tot_rec = _fader_epoch(model, data, config, gen, device, reference, opt, sched)
            n = images.shape[0]
            row = {"epoch": epoch + 1, "ranking_loss": tot_rank / n, "reconstruction_loss": tot_rec / n,
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            history.append(row)
            bar.set_postfix(rank=f"{row['ranking_loss']:.4f}")
            if on_epoch:
                on_epoch(row)
        if calibrated:  # the head has stopped moving: its final calibration (M_B without blobs)
            model.calibrate(images, masks, batch_size=config.batch_size, scores=scores, threshold=score_threshold)
        if config.recalibrate_bn:
            _recalibrate_decoder(model, encoder, data, config, gen, device)
    finally:
        for p, flag in saved_grad:
            p.requires_grad_(flag)
        model.eval()
    return history


def _train_mode(model: TrainableFader, encoder: list[nn.Module]) -> None:
    """Train mode again after a calibration, the frozen encoder's BatchNorm statistics kept fixed."""
    model.train()
    for module in encoder:
        module.eval()


def _score_input(model: TrainableFader, images: Tensor, masks: Tensor | None, scores: Tensor | None) -> Tensor | None:
    """The checked training inputs; ``scores`` for a head that reads them, else None."""
    if model.head is None:
        raise ValueError("train_fader needs a FaderModel with a head")
    _check_inputs(images, masks)
    if not model.needs_scores:
        return None
    if scores is None:
        raise UserError("this FADeR head reads the masker's score map: pass scores= (the masker's score_map of "
                        "the training images)")
    if scores.shape[0] != images.shape[0] or scores.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"scores {list(scores.shape)} do not match images {list(images.shape)}")
    return scores


def _ear_reference(rec: Reconstructor, device: torch.device) -> nn.Module:
    """Plain EAR as it is now (``target="ear"``): a frozen copy in eval mode."""
    import copy

    reference = copy.deepcopy(rec).to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def _fader_optimizer(model: TrainableFader, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Move ``model`` to ``device`` in train mode with its encoder frozen (weights and BatchNorm
    statistics); Adam over the head at ``lr`` and the decoder at ``decoder_lr_factor * lr``."""
    rec = model.reconstructor
    encoder_params = {id(p) for p in rec.encoder_parameters()}
    model.to(device).train()
    for p in rec.encoder_parameters():
        p.requires_grad_(False)
    for module in rec.encoder_modules():  # frozen encoder: keep its BN statistics fixed too
        module.eval()
    assert model.head is not None
    decoder_params = [p for p in rec.decoder_parameters() if id(p) not in encoder_params]
    groups = [{"params": list(model.head.parameters()), "lr": config.lr}]
    if config.decoder_lr_factor > 0:
        groups.append({"params": decoder_params, "lr": config.lr * config.decoder_lr_factor})
    return torch.optim.Adam(groups)


def _fader_epoch(model: TrainableFader, data: tuple[Tensor, Tensor | None, Tensor | None], config: TrainConfig,
                 gen: torch.Generator, device: torch.device, reference: nn.Module | None,
                 opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> tuple[float, float]:
    """One epoch of FADeR steps; returns the summed (over images) ranking and reconstruction losses."""
    images, masks, scores = data
    head_cfg = model.config
    tot_rank, tot_rec = 0.0, 0.0
    for x, mb, *s in _training_batches(images, masks, config, gen, device, scores):
        x_in = x
        if head_cfg.pseudo_anomalies > 0:
            x_in, _ = paste_pseudo_anomalies(x, head_cfg.pseudo_anomalies, head_cfg.pseudo_area, gen,
                                             head_cfg.pseudo_source)
        out = model(x_in, mb, detach_gates=True, scores=s[0] if s else None)
        target = error_target(model, x, out, reference)
        valid = unmasked_patches(mb, model.patch_size) if head_cfg.focus == "unmasked" else None
        l_rank = ranking_loss(out.predicted_error, target, head_cfg.margin, config.ranking_pairs, gen, valid=valid)
        l_rec = reconstruction_loss(out.reconstruction, x) if config.decoder_lr_factor > 0 else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        loss = l_rank + l_rec
        if loss.requires_grad:  # gates that learn nothing, with no decoder fine-tuning, leave nothing to learn
            loss.backward()
            opt.step()
        sched.step()
        tot_rank += float(l_rank.detach()) * x.shape[0]
        tot_rec += float(l_rec.detach()) * x.shape[0]
    return tot_rank, tot_rec


def _recalibrate_decoder(model: TrainableFader, encoder: list[nn.Module],
                         data: tuple[Tensor, Tensor | None, Tensor | None], config: TrainConfig,
                         gen: torch.Generator, device: torch.device) -> None:
    """The decoder moved and now sees gated skips: re-estimate its BatchNorm statistics (not the encoder's)."""
    images, masks, scores = data
    enc_bn = {id(bn) for bn in batchnorm_layers(encoder)}
    layers = [bn for bn in batchnorm_layers([model.reconstructor]) if id(bn) not in enc_bn]
    recalibrate_batchnorm(model, layers, lambda x, mb, s=None: model(x, mb, scores=s),
                          _training_batches(images, masks, config, gen, device, scores))


def seeded_init(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its initial weights drawn from ``seed``, leaving global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
