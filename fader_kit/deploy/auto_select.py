"""``fader-kit fit --score auto --masker auto``: fit every candidate detector, keep the best.

A candidate is a masker and a score kind (:mod:`fader_kit.deploy.score_kinds`), named ``masker/kind``
(``msflow/fused``).  Each masker is fitted once; the EAR U-Net is trained once for all of them when
it learns from random blobs alone (``--ear-masks blobs``, the default: the same seeded training
whichever masker follows), else once per masker; the FADeR head and the fusion are trained per
masker (:func:`fader_kit.deploy.fit_parts.train_parts`).  Every candidate is calibrated on the fit's
held-out normal images, as a fixed fit calibrates its detector.

The choice needs no defect: each candidate separates the held-out normal images from the same
images with synthetic defects (:mod:`fader_kit.deploy.selection`, :mod:`fader_kit.data.pseudo_defects`),
judged only on the defect kinds *no* candidate trained on (the FADeR head and the fused score's
mix learn from pasted patches, so with them in the race ``cutpaste`` is left out for everyone).
Labelled validation images, when given, decide instead.  The margin between the two best says
how sure the choice is.  Candidates are fitted cheapest first, and a time budget stops the
search early, naming what it skipped.  The chosen detector is saved as a fixed fit saves one,
with ``selection.json`` (the table of every candidate) beside it and the table in its model card.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from fader_kit.model.config import FaderConfig, Profile
from fader_kit.deploy.detector import Detector, DetectorSettings
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit_parts import candidate_detectors, shared_ear_unet, train_parts, trained_on
from fader_kit.deploy.fit import (FitData, check_fit_out, fit_manifest, fit_settings, fitted_masker, load_fit_data, save_fit,
                      with_seconds)
from fader_kit.deploy.score_kinds import SCORE_NAMES, ScoreKind, batched_maps, fused_twin, score_kind
from fader_kit.deploy.selection import BUDGET_ORDER, Candidate, Selection, fit_within_budget, select

AUTO = "auto"
#: The maskers ``--masker auto`` tries: the built-ins that fit and run offline, cheapest first.
DEFAULT_CANDIDATES: tuple[str, ...] = ("patch_stats", "msflow", "ami_net")
#: A margin below this is reported as a near tie (the pseudo-defects barely tell the two apart).
NEAR_TIE = 0.01
Log = Callable[[str], None]


def candidate_name(masker: str, kind: str) -> str:
    return f"{masker}/{kind}"


def plan(masker: str, score: str, candidates: list[str] | None) -> tuple[list[str], list[ScoreKind]]:
    """The maskers (cheapest first) and score kinds to try: ``auto`` on an axis opens it (``candidates``
    or :data:`DEFAULT_CANDIDATES` for the maskers, every kind for the score), a name fixes it."""
    if candidates and masker != AUTO:
        raise ConfigError(f"argument --candidates: lists the maskers to choose from, so it needs --masker auto "
                          f"(got --masker {masker})")
    if candidates is not None and not candidates:
        raise ConfigError("argument --candidates: name at least one masker")
    maskers = (list(candidates or DEFAULT_CANDIDATES)) if masker == AUTO else [masker]
    if len(set(maskers)) != len(maskers):
        raise ConfigError(f"argument --candidates: a masker is named twice in {','.join(maskers)}")
    rank = {n: i for i, n in enumerate(BUDGET_ORDER)}
    maskers = sorted(maskers, key=lambda n: (rank.get(n, len(rank)), maskers.index(n)))
    kinds = [score_kind(n) for n in SCORE_NAMES] if score == AUTO else [score_kind(score)]
    return maskers, kinds


class SearchReport(BaseModel):
    """``selection.json``: what the search compared, chose and skipped, and what it cost."""

    selection: Selection
    maskers: list[str]
    scores: list[str]
    skipped: dict[str, str] = Field(default_factory=dict)  # candidate -> why it is not in the table
    budget_s: float | None = None
    search_s: float  # wall seconds from the first candidate's fit to the choice
    search_cpu_s: float  # CPU seconds of this process over the same span
    shared_unet: bool  # one EAR U-Net served every masker

    def text(self, fmt: str = "plain") -> str:
        """The table, the candidates left out and why, and how sure the choice is."""
        lines = [self.selection.table(fmt)]
        lines += [f"not compared: {name} ({why})" for name, why in self.skipped.items()]
        lines.append(how_sure(self.selection))
        return "\n".join(lines)


def how_sure(sel: Selection) -> str:
    """One sentence on the margin between the two best candidates."""
    if sel.margin is None:
        return f"how sure: one candidate only ({sel.chosen}), nothing to compare"
    measure = "validation AUROC" if sel.criterion == "validation" else "mean pseudo-defect AUROC"
    text = f"how sure: {sel.chosen} leads the runner-up by {sel.margin:.3f} {measure}"
    if sel.margin < NEAR_TIE:
        text += (" -- a near tie: the two best are about equally good here"
                 + ("; labelled images (--validation DIR) would decide better" if sel.criterion != "validation" else ""))
    return text


@dataclass
class Search:
    """The candidates' fits: each masker once, the shared U-Net once, every detector calibrated."""

    data: FitData
    profile: Profile
    head: FaderConfig
    settings: DetectorSettings  # the fit's, masker and score replaced per candidate
    options: dict[str, Any]
    device: torch.device
    started: float
    progress: bool = False
    log: Log = print
    maskers: dict[str, tuple[Any, float]] = field(default_factory=dict)  # name -> (fitted masker, seconds)
    failed: dict[str, str] = field(default_factory=dict)  # masker -> why it could not be fitted
    unets: dict[str, tuple[Any, float]] = field(default_factory=dict)  # "" (shared) or masker -> U-Net, seconds
    masks: dict[str, Tensor] = field(default_factory=dict)  # masker -> its binary masks of the training images
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> its fit steps

    def masker(self, name: str) -> Any:
        if name not in self.maskers and name not in self.failed:
            from fader_kit.maskers.registry import default_registry

            t0 = time.perf_counter()
            try:
                m = fitted_masker(default_registry(), name, self.options, self.data.train, seed=self.settings.seed,
                                  device=self.device, progress=self.progress)
            except Exception as exc:  # a candidate that cannot run here is reported, not fatal
                self.failed[name] = f"masker failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.log(f"  {name}: {self.failed[name]}")
            else:
                self.maskers[name] = (m, time.perf_counter() - t0)
                self.log(f"  masker {name} (weights: {m.info.weights}) fitted in {self.maskers[name][1]:.1f}s")
        return self.maskers[name][0] if name in self.maskers else None

    def unet_for(self, name: str, masker: Any) -> tuple[Any, float]:
        """The EAR U-Net of the masker's candidates and its training seconds: trained once for every
        masker on random blobs (``--ear-masks blobs``), else once per masker on its masks."""
        key = "" if self.settings.ear_masks == "blobs" else name
        if key not in self.unets:
            if not key:
                self.unets[key] = shared_ear_unet(self.data.train, self.profile, seed=self.settings.seed,
                                                  device=self.device, progress=self.progress)
            else:
                from fader_kit.model.pipeline import ear_stage

                unet, info = ear_stage(self.data.train, lambda: self.masks_of(name, masker), self.profile,
                                       ear_masks="masker", seed=self.settings.seed, device=self.device,
                                       progress=self.progress)
                self.unets[key] = (unet, float(info["seconds"]))
            self.log(f"  EAR U-Net ({'serves every masker' if not key else 'on ' + name + ' masks'}) trained in "
                     f"{self.unets[key][1]:.1f}s")
        return self.unets[key]

    def masks_of(self, name: str, masker: Any) -> Tensor:
        """The masker's binary masks of the training images, computed once for all its candidates."""
        if name not in self.masks:
            from fader_kit.model.pipeline import compute_masks

            self.masks[name] = compute_masks(masker, self.data.train, batch_size=self.profile.eval_batch_size,
                                             device=self.device, progress=self.progress)
        return self.masks[name]

    def fit(self, name: str) -> Detector | None:
        """The calibrated detector of the candidate ``masker/kind`` (None: its masker failed)."""
        masker_name, kind_name = name.rsplit("/", 1)
        kind = score_kind(kind_name)
        masker = self.masker(masker_name)
        if masker is None:
            return None
        steps = {"masker": self.maskers[masker_name][1]}
        unet = self.unet_for(masker_name, masker) if kind.unet else None
        parts = train_parts([kind.name], self.data.train, masker, masker_name, profile=self.profile, head=self.head,
                            ear_masks=self.settings.ear_masks, seed=self.settings.seed, device=self.device,
                            progress=self.progress, log=lambda m: self.log(f"  {m}"),
                            unet=None if unet is None else unet[0],
                            masks=self.masks_of(masker_name, masker) if kind.unet else None)
        steps.update({"ear": unet[1]} if unet is not None else {}, **parts.seconds)
        self.seconds[name] = steps
        settings = self.settings.model_copy(update={"masker": masker_name})
        summary = self.data.summary(self.device, masker.info.model_dump(mode="json"), self.started)
        return candidate_detectors(parts, [kind.name], self.data.held, fit_manifest(settings, summary),
                                   rate=settings.false_alarm_rate, device=self.device,
                                   batch_size=self.profile.eval_batch_size)[kind.name]


def score_fn(detector: Detector, batch_size: int) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], list[float]]:
    """The detector as a selection candidate's score function (image score = the map's maximum, as
    calibrated), and a ``[images, seconds]`` tally of what it scored (its throughput)."""
    kind, fusion, kernel = detector.settings.kind, detector.calibration.fusion, detector.settings.kernel_size
    tally = [0.0, 0.0]

    def fn(images: Tensor) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        maps = batched_maps(kind, images, detector.masker, detector.model, fusion, kernel, batch_size=batch_size,
                            device=detector.device)
        tally[0] += images.shape[0]
        tally[1] += time.perf_counter() - t0
        return maps.flatten(1).amax(dim=1), maps

    return fn, tally


def same_detectors(fitted: dict[str, Detector]) -> dict[str, str]:
    """The fused candidates that are another candidate under a second name, and why
    (:func:`fader_kit.deploy.score_kinds.fused_twin`): such a one would only tie with its twin and
    hide the real margin."""
    out = {}
    for name, detector in fitted.items():
        twin = fused_twin(detector.calibration.fusion)
        if twin is None:
            continue
        alone = candidate_name(name.rsplit("/", 1)[0], twin)
        if alone in fitted:
            out[name] = f"the same detector as {alone}: the fusion's weight on that map is 1"
    return out


def compare(search: Search, fitted: dict[str, Detector]) -> Selection:
    """The selection over the fitted candidates (pseudo-defects on the held-out images, or the
    validation images when given), with each one's fit time and images/s in the table."""
    candidates, tallies = [], {}
    for name, detector in fitted.items():
        fn, tallies[name] = score_fn(detector, search.profile.eval_batch_size)
        candidates.append(Candidate(name, fn, trained_on(detector.settings.kind, search.head)))
    v = search.data.validation
    timings = {n: (sum(search.seconds[n].values()), None) for n in fitted}
    sel = select(candidates, search.data.held, search.settings.seed, timings=timings,
                 validation=None if v is None else (v[0], v[1]))
    for row in sel.candidates:
        images, seconds = tallies[row.name]
        row.images_per_s = images / seconds if seconds > 0 else None
    return sel


def run_search(search: Search, names: list[str], budget_s: float | None) -> tuple[dict[str, Detector], list[str]]:
    """Fit ``names`` in order within ``budget_s``, a progress line per candidate: (the fitted detectors,
    the names the budget skipped)."""
    count = iter(range(1, len(names) + 1))

    def fit_one(name: str) -> Detector | None:
        i, t0 = next(count), time.perf_counter()
        search.log(f"[{i}/{len(names)}] {name}")
        detector = search.fit(name)
        if detector is not None:
            search.log(f"[{i}/{len(names)}] {name}: ready after {time.perf_counter() - t0:.1f}s "
                       f"(fitting it alone takes {sum(search.seconds[name].values()):.1f}s)")
        return detector

    run = fit_within_budget(names, fit_one, budget_s)
    for name in run.skipped:
        search.log(f"skipped {name}: the budget of {budget_s:g}s is spent")
    return {n: d for n, d in run.fitted.items() if isinstance(d, Detector)}, run.skipped


def fit_auto(
    normal: str | Path, *, profile: Profile, head_variant: str, masker: str = AUTO, score: str = AUTO,
    candidates: list[str] | None = None, budget_s: float | None = None, out: str | Path | None = None,
    masker_options: dict[str, Any] | None = None, seed: int = 0, device: torch.device | str = "cpu",
    holdout: float = 0.15, false_alarm_rate: float = 0.01, validation: str | Path | None = None,
    ear_masks: str = "blobs", batch_size: int = 16, progress: bool = False, log: Log = print, overwrite: bool = False,
) -> tuple[Detector, SearchReport]:
    """Fit every candidate (``masker`` / ``score``: ``auto`` or one name each; ``candidates``: the
    maskers ``auto`` tries, default :data:`DEFAULT_CANDIDATES`), choose one without test labels (see
    the module notes) and return it with the search's report; saved to ``out`` as
    :func:`fader_kit.deploy.fit.fit_detector` saves a detector, plus ``selection.json``.  ``budget_s``
    bounds the seconds spent fitting candidates (the first is always fitted)."""
    from fader_kit.deploy.thresholds import check_rate
    from fader_kit.maskers.registry import default_registry
    from fader_kit.model.variants import resolve as resolve_variant

    maskers, kinds = plan(masker, score, candidates)
    check_rate(false_alarm_rate)
    if budget_s is not None and budget_s <= 0:
        raise ConfigError(f"argument --budget {budget_s:g}: expected a positive number of seconds")
    checked_out = None if out is None else check_fit_out(out, overwrite)
    registry = default_registry()
    head = resolve_variant(profile.fader_head, head_variant)
    options = {k: v for k, v in (masker_options or {}).items() if k != "device"}
    started = time.time()
    data = load_fit_data(normal, holdout=holdout, rate=false_alarm_rate, seed=seed, size=profile.image_size,
                         validation=validation, progress=progress, log=log,
                         check=lambda: [registry.get(m) for m in maskers])  # a misspelt name fails before reading
    settings = fit_settings(profile, head, masker=maskers[0], options=options, head_variant=head_variant, seed=seed,
                            ear_masks=ear_masks, holdout=holdout, false_alarm_rate=false_alarm_rate,
                            batch_size=batch_size, score=kinds[0].name)
    search = Search(data, profile, head, settings, options, torch.device(device), started, progress, log)
    names = [candidate_name(m, k.name) for m in maskers for k in kinds]
    log(f"choosing among {len(names)} candidates ({', '.join(maskers)} x {', '.join(k.name for k in kinds)}) by "
        f"{'validation AUROC' if data.validation else 'pseudo-defects on the held-out images'}"
        + (f" within {budget_s:g}s" if budget_s else ""))
    wall, cpu = time.perf_counter(), time.process_time()
    fitted, skipped = run_search(search, names, budget_s)
    if not fitted:
        raise ConfigError("no candidate could be fitted: " + "; ".join(f"{m}: {w}" for m, w in search.failed.items()))
    twins = same_detectors(fitted)
    selection = compare(search, {n: d for n, d in fitted.items() if n not in twins})
    report = SearchReport(
        selection=selection, maskers=maskers, scores=[k.name for k in kinds], budget_s=budget_s,
        skipped={**{n: search.failed[n.rsplit("/", 1)[0]] for n in names if n not in fitted and n not in skipped},
                 **{n: f"not fitted within the budget of {budget_s:g}s" for n in skipped}, **twins},
        search_s=time.perf_counter() - wall, search_cpu_s=time.process_time() - cpu,
        shared_unet=ear_masks == "blobs" and any(k.unet for k in kinds))
    log(report.text("plain"))
    detector = finish(fitted[selection.chosen], search, report)
    if checked_out is not None:
        save_with_report(detector, report, checked_out, overwrite)
    return detector, report


def finish(detector: Detector, search: Search, report: SearchReport) -> Detector:
    """The chosen detector with its validation (when given) and its fit's times in the manifest."""
    v = search.data.validation
    if v is not None:
        from fader_kit.deploy.thresholds import validate

        fn, _ = score_fn(detector, search.profile.eval_batch_size)
        detector.calibration = validate(detector.calibration, fn(v[0])[1], v[1], v[2], v[3])
    with_seconds(detector, {**search.seconds[report.selection.chosen], "search": report.search_s})
    return detector


def save_with_report(detector: Detector, report: SearchReport, out: Path, overwrite: bool) -> None:
    """The detector folder, its model card with the search's table, and ``selection.json``."""
    from fader_kit.deploy.modelcard import model_card
    from fader_kit.deploy.modeldir import SELECTION

    card = model_card(detector.manifest, detector.calibration, selection=report.text("markdown"))
    save_fit(detector, out, overwrite, card=card, extras={SELECTION: report.model_dump_json(indent=2) + "\n"})


def read_report(folder: str | Path) -> SearchReport | None:
    """The search's report saved in a detector folder (None: it was fitted with a fixed masker and score)."""
    from fader_kit.deploy.modeldir import MAX_BYTES, SELECTION, parse_json, read_capped

    path = Path(folder) / SELECTION
    if not path.is_file():
        return None
    return SearchReport.model_validate(parse_json(read_capped(path, MAX_BYTES[SELECTION]), path))
