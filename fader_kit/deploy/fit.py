"""``fader-kit fit``: a :class:`~fader_kit.deploy.detector.Detector` from a folder of normal images alone.

The masker and what the detector's score kind needs (:mod:`fader_kit.deploy.score_kinds`: nothing more for
the masker alone; the EAR U-Net; the FADeR head; the fusion) are trained exactly as ``fader-kit
evaluate`` trains them (the same pipeline functions, profile, head variant and seed;
:func:`fader_kit.deploy.fit_parts.train_parts`), on all normal images but a seeded held-out share; the
held-out images are scored to calibrate the thresholds (:mod:`fader_kit.deploy.thresholds`).  Training images must all be readable: a damaged normal image is
an error naming the file, never silently dropped.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fader_kit.deploy.thresholds import check_rate
from fader_kit.model.config import Profile
from fader_kit.deploy.detector import Detector, DetectorSettings, Manifest, TrainingSummary
from fader_kit.errors import ConfigError
from fader_kit.deploy.imagefiles import load_array, normal_images, to_tensor
from fader_kit.deploy.score_kinds import DEFAULT_SCORE, score_kind
from fader_kit.util.sampling import seeded_split
from fader_kit.util.timing import Stopwatch
from fader_kit.model.variants import resolve as resolve_variant

MIN_NORMAL_IMAGES = 10
MIN_HOLDOUT = 5

Log = Callable[[str], None]


def holdout_plan(n: int, holdout: float, rate: float | None = None, folder: str = "") -> tuple[int, list[str]]:
    """How many of ``n`` normal images to hold out, and what the user should hear about it before
    training.  ``holdout`` is a share (0 < h < 1) or a count (a whole number >= 1).  A share is grown to
    the fewest images that resolve the false-alarm ``rate`` (:func:`~fader_kit.deploy.thresholds.min_holdout`)
    where that leaves at least half of the images to train on; a count is taken as given.  When the
    hold-out cannot resolve the rate, the notes say so (the rate's threshold would be the highest
    held-out score, with a higher expected false-alarm rate than asked)."""
    from fader_kit.deploy.thresholds import conformal_rank, expected_false_alarm_rate, min_holdout

    if not isinstance(holdout, (int, float)) or math.isnan(holdout) or holdout <= 0 or (
            holdout >= 1 and holdout != int(holdout)):
        raise ConfigError(f"argument --holdout {holdout!r}: expected a share between 0 and 1 (e.g. 0.15) or a whole "
                          "number of images (e.g. 40)")
    if n < MIN_NORMAL_IMAGES:
        raise ConfigError(f"argument --normal {folder}: {n} normal image(s) found; fit needs at least "
                          f"{MIN_NORMAL_IMAGES} ({MIN_HOLDOUT} or more are held out to set the thresholds)")
    notes: list[str] = []
    if holdout >= 1:
        k = int(holdout)
        if k < MIN_HOLDOUT:
            raise ConfigError(f"argument --holdout {holdout:g}: hold out at least {MIN_HOLDOUT} images")
    else:
        k = max(MIN_HOLDOUT, int(round(holdout * n)))
        need = min_holdout(rate) if rate is not None else 0
        if k < need <= n // 2:
            notes.append(f"holding out {need} images instead of {k} (share {holdout:g}): the false-alarm rate {rate:g} "
                         f"needs at least {need} held-out normal images to be resolved")
            k = need
    if n - k < MIN_HOLDOUT:
        raise ConfigError(f"argument --holdout {holdout:g}: holding out {k} of {n} images leaves fewer than "
                          f"{MIN_HOLDOUT} to train on")
    if rate is not None and conformal_rank(k, rate) > k:
        notes.append(f"warning: the false-alarm rate {rate:g} cannot be resolved with {k} held-out images (it needs "
                     f"{min_holdout(rate)}; this folder has {n}): the image threshold will be the highest held-out "
                     f"score, expected to flag {expected_false_alarm_rate(k, k):.4f} of new normal images; ask for a "
                     f"rate of at least {1 / (k + 1):.4f}, or give more normal images")
    return k, notes


def holdout_split(n: int, holdout: float, seed: int, folder: str = "", rate: float | None = None
                  ) -> tuple[list[int], list[int]]:
    """``(train, held_out)`` indices: a seeded hold-out of :func:`holdout_plan`'s size (at least 5)."""
    k, _ = holdout_plan(n, holdout, rate, folder)
    return seeded_split(n, k, seed)


def read_images(paths: list[Path], size: int, progress: bool = False, desc: str = "reading") -> Tensor:
    from fader_kit.data.imageio import parallel_map

    return to_tensor(parallel_map(lambda p: load_array(p, size)[0], paths, progress=progress, desc=desc))


def read_validation(folder: Path, size: int, progress: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Images, labels and ground-truth masks of a labelled folder in the MVTec layout
    (``test/good``, ``test/<defect>``, optional ``ground_truth/<defect>/<name>_mask.png``)."""
    from fader_kit.data.imageio import list_images, read_mask

    test = folder / "test"
    if not test.is_dir():
        raise ConfigError(f"argument --validation {folder}: no test/ folder (expected the MVTec layout "
                          "<folder>/test/good, <folder>/test/<defect>)")
    paths, labels, mask_files = [], [], []
    for kind in sorted(d.name for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for p in list_images(test / kind):
            paths.append(p)
            labels.append(0 if kind == "good" else 1)
            m = folder / "ground_truth" / kind / f"{p.stem}_mask.png"
            mask_files.append(m if kind != "good" and m.is_file() else None)
    if not paths:
        raise ConfigError(f"argument --validation {folder}: test/ holds no images")
    images = read_images(paths, size, progress, "validation")
    masks = None
    if any(m is not None for m in mask_files):
        arrays = []
        for p, m in zip(paths, mask_files):
            if m is None:
                arrays.append(np.zeros((size, size), dtype=bool))
            else:
                with Image.open(p) as img:  # the header alone gives the original size
                    original = img.size
                arrays.append(read_mask(m, size, threshold=127, image_path=p, image_size=original))
        masks = torch.from_numpy(np.stack(arrays))[:, None]
    return images, torch.tensor(labels), masks


def check_fit_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as the detector folder to write, checked before any training: a file there is refused, a
    detector folder there is replaced only with ``overwrite``, and any other non-empty folder never
    (fit replaces the whole folder, so it must not be one holding something else)."""
    from fader_kit.util.files import writable_folder

    out = writable_folder(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / "detector.json").is_file():
            raise ConfigError(f"argument --out {out}: the folder exists, is not empty and is not a detector folder; "
                              "name a new folder (fit writes the whole folder)")
        if not overwrite:
            raise ConfigError(f"argument --out {out}: a detector folder is already there; pass --overwrite to replace "
                              "it (it is replaced only once the new detector is complete)")
    return out


@dataclass
class FitData:
    """The normal images of a fit, split into those that train and those held out to calibrate (and,
    with ``fit --score auto``, to choose), and the labelled validation images when given."""

    folder: Path
    paths: list[Path]
    train_idx: list[int]
    hold_idx: list[int]
    train: Tensor
    held: Tensor
    validation: tuple[Tensor, Tensor, Tensor | None, str] | None = None

    def summary(self, device: torch.device, masker_info: dict[str, Any], started: float) -> TrainingSummary:
        """The manifest's training summary (its ``seconds`` are added once the fit is done)."""
        return TrainingSummary(
            normal_folder=str(self.folder), n_images=len(self.paths), n_train=len(self.train_idx),
            n_holdout=len(self.hold_idx), holdout_files=[str(self.paths[i].relative_to(self.folder)) for i in self.hold_idx],
            device=str(device), seconds={}, masker_info=masker_info, created_at=iso_time(started))


def load_fit_data(normal: str | Path, *, holdout: float, rate: float, seed: int, size: int,
                  validation: str | Path | None, progress: bool, log: Log, check: Callable[[], object] = lambda: None,
                  ) -> FitData:
    """The normal images under ``normal`` read at ``size`` px and split (the hold-out notes logged
    first, so the user can stop and give more images), then the ``validation`` folder's images.
    ``check`` runs after the folder is listed and before any image is read (e.g. the masker name)."""
    folder = Path(normal)
    paths = normal_images(folder)
    for note in holdout_plan(len(paths), holdout, rate, str(folder))[1]:
        log(note)
    split = holdout_split(len(paths), holdout, seed, str(folder), rate)
    check()
    train, held = read_split(folder, paths, split, size, progress, log)
    v = None if validation is None else (*read_validation(Path(validation), size, progress), str(validation))
    return FitData(folder, paths, split[0], split[1], train, held, v)


def fit_settings(profile: Profile, head: Any, *, masker: str, options: dict[str, Any], head_variant: str, seed: int,
                 ear_masks: str, holdout: float, false_alarm_rate: float, batch_size: int, score: str
                 ) -> DetectorSettings:
    """The detector's settings as a fit records them."""
    return DetectorSettings(
        profile=profile.name, image_size=profile.image_size, masker=masker, masker_options=options,
        fader_variant=head_variant, fader_config=head.model_dump(mode="json"),
        unet_config=profile.unet.model_dump(mode="json"), seed=seed, ear_masks=ear_masks, holdout=holdout,
        false_alarm_rate=false_alarm_rate, batch_size=batch_size, score=score)


def fit_detector(
    normal: str | Path, *, masker: str, profile: Profile, out: str | Path | None = None,
    masker_options: dict[str, Any] | None = None, head_variant: str, seed: int = 0, device: torch.device | str = "cpu",
    holdout: float = 0.15, false_alarm_rate: float = 0.01, validation: str | Path | None = None,
    ear_masks: str = "blobs", batch_size: int = 16, progress: bool = False, log: Log = print, overwrite: bool = False,
    score: str = DEFAULT_SCORE,
) -> Detector:
    """Fit and calibrate a detector on the images under ``normal``, scoring with the kind ``score``
    (:mod:`fader_kit.deploy.score_kinds`: ``masker``, ``ear``, ``fader`` or ``fused``; only what it needs is
    trained); saved to ``out`` when given (checked before any training; written beside it and renamed
    into place at the end, so a failed fit never leaves half a detector; an existing detector folder is
    replaced only with ``overwrite``).  :func:`fader_kit.deploy.auto_select.fit_auto` chooses the masker and
    the kind instead."""
    from fader_kit.deploy.fit_parts import candidate_detectors, train_parts
    from fader_kit.maskers.registry import default_registry

    kind = score_kind(score)
    check_rate(false_alarm_rate)
    if out is not None:
        out = check_fit_out(out, overwrite)
    watch = Stopwatch()
    device = torch.device(device)
    registry = default_registry()
    options = {k: v for k, v in (masker_options or {}).items() if k != "device"}
    head = resolve_variant(profile.fader_head, head_variant)
    t_start = time.time()
    with watch("read"):  # an unknown masker name fails before any image is read
        data = load_fit_data(normal, holdout=holdout, rate=false_alarm_rate, seed=seed, size=profile.image_size,
                             validation=validation, progress=progress, log=log, check=lambda: registry.get(masker))
    with watch("masker"):
        m = fitted_masker(registry, masker, options, data.train, seed=seed, device=device, progress=progress)
    log(f"masker {masker} (weights: {m.info.weights}) fitted in {watch.seconds['masker']:.1f}s")
    parts = train_parts([kind.name], data.train, m, masker, profile=profile, head=head, ear_masks=ear_masks, seed=seed,
                        device=device, progress=progress, log=log)
    watch.seconds.update(parts.seconds)
    settings = fit_settings(profile, head, masker=masker, options=options, head_variant=head_variant, seed=seed,
                            ear_masks=ear_masks, holdout=holdout, false_alarm_rate=false_alarm_rate,
                            batch_size=batch_size, score=kind.name)
    summary = data.summary(device, m.info.model_dump(mode="json"), t_start)
    with watch("calibrate"):
        detector = candidate_detectors(parts, [kind.name], data.held, fit_manifest(settings, summary),
                                       rate=false_alarm_rate, device=device, batch_size=profile.eval_batch_size,
                                       validation=data.validation)[kind.name]
    with_seconds(detector, watch.seconds)
    if out is not None:
        save_fit(detector, out, overwrite)
    return detector


def with_seconds(detector: Detector, seconds: dict[str, float]) -> None:
    """Record the fit's step times (rounded) in the detector's manifest."""
    training = detector.manifest.training.model_copy(update={"seconds": {k: round(x, 3) for k, x in seconds.items()}})
    detector.manifest = detector.manifest.model_copy(update={"training": training})


def read_split(folder: Path, paths: list[Path], split: tuple[list[int], list[int]], size: int, progress: bool,
               log: Log) -> tuple[Tensor, Tensor]:
    """The normal images under ``folder`` at ``size`` px, as (training images, held-out images)."""
    train_idx, hold_idx = split
    images = read_images(paths, size, progress, "normal images")
    log(f"normal images: {len(paths)} under {folder} ({len(train_idx)} to train, {len(hold_idx)} held out to "
        f"calibrate) at {size}px")
    return images[train_idx], images[hold_idx]


def iso_time(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")


def fitted_masker(registry: Any, name: str, options: dict[str, Any], images: Tensor, *, seed: int,
                  device: torch.device, progress: bool) -> Any:
    """The masker ``name`` with ``options``, on ``device``, fitted on the normal training ``images``."""
    from fader_kit.model.pipeline import fit_masker

    m = registry.create(name, **{**options, "device": str(device)})
    m.to(device)
    fit_masker(m, images, seed=seed, device=device, progress=progress)
    return m


def save_fit(detector: Detector, out: Path, overwrite: bool, *, card: str | None = None,
             extras: dict[str, str] | None = None) -> None:
    """Write the fitted detector to ``out``: beside it first, renamed into place once complete."""
    from fader_kit.util.files import atomic_folder

    check_fit_out(out, overwrite)  # again: something may have appeared there during the training
    with atomic_folder(out) as partial:
        detector.save(partial, card=card, extras=extras)


def fit_manifest(settings: DetectorSettings, summary: TrainingSummary) -> Manifest:
    """``detector.json`` of a fit (its digests are added when the folder is saved)."""
    from fader_kit.version import __version__
    from fader_kit.deploy.detector import FORMAT, FORMAT_VERSION
    from fader_kit.model.pipeline import environment

    return Manifest(format=FORMAT, format_version=FORMAT_VERSION, created_by=f"fader-kit {__version__}",
                    settings=settings, training=summary, environment=environment())
