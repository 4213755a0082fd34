"""Choosing a detector from normal images alone: pseudo-defect AUROC, the choice, its margin.

Each candidate (a masker alone, EAR, EAR + FADeR head, fused, ...) is a scoring function of
images.  On held-out *normal* images it is asked to separate each image from the same image with
a synthetic defect (:mod:`fader_kit.data.pseudo_defects`), one test per kind; its AUROC per kind is
its *pseudo AUROC*.

The selection score must be comparable across candidates, so it is the mean pseudo AUROC over the
kinds that **no** candidate trained on (a head trained on pasted squares is not judged on pasted
patches, and then neither is anyone else: every candidate is ranked on the same kinds).  With
labelled validation images the validation AUROC replaces it.  The candidate with the highest
score wins (ties: the earlier candidate, i.e. the cheaper in :data:`BUDGET_ORDER`); the margin
to the runner-up says how sure the choice is.

:func:`regret` is what ``evaluate`` and ``bench`` report beside it: the best candidate's test
AUROC minus the chosen one's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from fader_kit.errors import ConfigError
from fader_kit.model.metrics import image_auroc, pixel_auroc
from fader_kit.data.pseudo_defects import DEFAULT_KINDS, DEFAULT_SIZE, check_kinds, make_defects
from fader_kit.util.sampling import seeded_split

ScoreFn = Callable[[Tensor], "Tensor | tuple[Tensor, Tensor]"]
"""Images ``[N, 3, H, W]`` -> image scores ``[N]`` (higher = more anomalous), or (scores, maps
``[N, 1, H, W]``) when the candidate localises (then a pseudo pixel AUROC is computed too)."""

BUDGET_ORDER: tuple[str, ...] = ("patch_stats", "msflow", "ami_net", "masker", "ear", "fader", "fused")
"""The order in which :func:`fit_within_budget` fits candidates: cheapest to fit first (measured
fit times at 128 px on a CPU: patch_stats under a second, msflow about a minute, AMI-Net two to
four; a U-Net's EAR before the FADeR head that needs it and the fusion that needs both).  Names
not listed keep their given order after the listed ones."""


@dataclass(frozen=True)
class Candidate:
    """A detector to choose from: its name, its scoring function, the pseudo-defect kinds its
    learned parts trained on (excluded from every candidate's selection score)."""

    name: str
    score: ScoreFn
    trained_on: tuple[str, ...] = ()


@dataclass
class PseudoSet:
    """One kind's test: the held-out normal images with defects and their masks."""

    kind: str
    images: Tensor
    masks: Tensor


def holdout_split(n: int, fraction: float, seed: int, minimum: int = 4) -> tuple[Tensor, Tensor]:
    """Indices (fit, held out) of ``n`` normal images: a seeded random ``fraction`` (at least
    ``minimum``) is held out for selection, the rest fits the candidates."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"argument fraction={fraction!r} must be in (0, 1)")
    held = max(minimum, round(n * fraction))
    if n - held < 1:
        raise ConfigError(f"{n} normal images are too few to hold {held} out for selection and fit on the rest")
    kept, held_out = seeded_split(n, held, seed)
    return torch.tensor(kept, dtype=torch.long), torch.tensor(held_out, dtype=torch.long)


def build_pseudo_sets(
    normal: Tensor, seed: int, kinds: Sequence[str] = DEFAULT_KINDS, size: float = DEFAULT_SIZE, copies: int = 1,
) -> list[PseudoSet]:
    """One :class:`PseudoSet` per kind on the held-out ``normal`` images, ``copies`` defective
    versions of each (more copies: a steadier AUROC from few images).  Copy ``c`` of the kind at
    index ``k`` is seeded ``seed * 1000 + 10 * k + c``, so adding a kind leaves the others unchanged."""
    if copies < 1:
        raise ConfigError(f"argument copies={copies!r} must be at least 1")
    out = []
    for k, kind in enumerate(check_kinds(list(kinds))):
        made = [make_defects(kind, normal, seed * 1000 + 10 * k + c, size=size) for c in range(copies)]
        out.append(PseudoSet(kind, torch.cat([m[0] for m in made]), torch.cat([m[1] for m in made])))
    return out


def _scores(fn: ScoreFn, images: Tensor) -> tuple[Tensor, Tensor | None]:
    with torch.no_grad():
        out = fn(images)
    scores, maps = out if isinstance(out, tuple) else (out, None)
    scores = scores.detach().float().cpu().reshape(-1)
    if scores.numel() != images.shape[0]:
        raise ValueError(f"a candidate's score function gave {scores.numel()} scores for {images.shape[0]} images")
    return scores, None if maps is None else maps.detach().float().cpu()


def pseudo_aurocs(fn: ScoreFn, normal: Tensor, sets: Sequence[PseudoSet]) -> tuple[dict[str, float], dict[str, float]]:
    """Image AUROC per kind (held-out normal vs the same images with defects) and, when ``fn``
    returns maps, the pixel AUROC per kind (over the defective images' pixels)."""
    base, _ = _scores(fn, normal)
    image, pixel = {}, {}
    for s in sets:
        scores, maps = _scores(fn, s.images)
        labels = torch.cat([torch.zeros(len(base)), torch.ones(len(scores))])
        image[s.kind] = image_auroc(torch.cat([base, scores]), labels)
        if maps is not None:
            pixel[s.kind] = pixel_auroc(maps, s.masks.cpu())
    return image, pixel


class CandidateScores(BaseModel):
    """One candidate's row of the selection table."""

    name: str
    trained_on: list[str] = Field(default_factory=list)
    pseudo_auroc: dict[str, float] = Field(default_factory=dict)
    pseudo_pixel_auroc: dict[str, float] = Field(default_factory=dict)
    pseudo_score: float | None = None
    validation_auroc: float | None = None
    selection_score: float
    fit_s: float | None = None
    images_per_s: float | None = None


class Selection(BaseModel):
    """The outcome: every candidate's scores, the kinds that ranked them, the choice and its margin."""

    criterion: str  # "pseudo-defects" or "validation"
    kinds: list[str]  # the kinds the selection score averages (trained-on kinds excluded)
    excluded_kinds: list[str]
    size: float
    seed: int
    candidates: list[CandidateScores]
    chosen: str
    margin: float | None  # best minus second-best selection score; None with one candidate

    def table(self, fmt: str = "markdown") -> str:
        """The candidates as a Markdown (``fmt="markdown"``) or aligned plain-text table."""
        return render_table(self, fmt)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rows(sel: Selection) -> tuple[list[str], list[list[str]]]:
    kinds = sorted({k for c in sel.candidates for k in c.pseudo_auroc}, key=lambda k: sel.kinds.index(k))
    head = ["candidate", "trained on", *(f"pseudo {k}" for k in kinds), "pseudo mean", "validation",
            "fit s", "images/s", "chosen"]
    body = [[c.name, ",".join(c.trained_on) or "–", *(_num(c.pseudo_auroc.get(k), 3) for k in kinds),
             _num(c.pseudo_score, 3), _num(c.validation_auroc, 3), _num(c.fit_s, 1), _num(c.images_per_s, 1),
             "yes" if c.name == sel.chosen else ""] for c in sel.candidates]
    return head, body


def render_table(sel: Selection, fmt: str = "markdown") -> str:
    """The selection as a Markdown table or aligned plain text, with a line naming the choice."""
    if fmt not in ("markdown", "plain"):
        raise ConfigError(f"argument fmt={fmt!r} must be 'markdown' or 'plain'")
    head, body = _rows(sel)
    margin = "n/a (one candidate)" if sel.margin is None else f"{sel.margin:.3f}"
    note = (f"chosen: {sel.chosen} by {sel.criterion} (kinds {', '.join(sel.kinds) or 'none'}"
            f"{'; excluded as trained on: ' + ', '.join(sel.excluded_kinds) if sel.excluded_kinds else ''}), "
            f"margin over the runner-up {margin}")
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *body]]
    return "\n".join([*lines, "", note])


def comparable_kinds(kinds: Sequence[str], candidates: Sequence[Candidate]) -> tuple[list[str], list[str]]:
    """(kinds every candidate can be judged on, kinds some candidate trained on)."""
    trained = {k for c in candidates for k in c.trained_on}
    return [k for k in kinds if k not in trained], [k for k in kinds if k in trained]


def choose(scores: Mapping[str, float]) -> tuple[str, float | None]:
    """The name with the highest score (first listed on ties) and its margin over the runner-up."""
    if not scores:
        raise ConfigError("no candidate to choose from")
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])  # stable: ties keep the given order
    margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else None
    return ranked[0][0], margin


def _validation_auroc(fn: ScoreFn, validation: tuple[Tensor, Tensor]) -> float:
    images, labels = validation
    return image_auroc(_scores(fn, images)[0], labels.cpu())


def select(
    candidates: Sequence[Candidate],
    normal: Tensor,
    seed: int,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    size: float = DEFAULT_SIZE,
    copies: int = 2,
    validation: tuple[Tensor, Tensor] | None = None,
    timings: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> Selection:
    """Score every candidate on pseudo-defects of ``kinds`` (``copies`` per held-out image) on the
    held-out ``normal`` images (and on ``validation`` = (images, labels) when given, which then decides) and choose one.
    ``timings`` maps a name to (fit seconds, images per second) for the table."""
    if not candidates:
        raise ConfigError("argument candidates: no candidate to choose from")
    if len({c.name for c in candidates}) != len(candidates):
        raise ConfigError("argument candidates: names must be unique")
    for c in candidates:
        check_kinds(list(c.trained_on), f"trained_on of candidate {c.name!r}")
    used, excluded = comparable_kinds(check_kinds(list(kinds)), candidates)
    if not used and validation is None:
        raise ConfigError(f"every pseudo-defect kind in {list(kinds)} was trained on by some candidate: "
                          "nothing is left to compare them on; add kinds or pass validation images")
    sets = build_pseudo_sets(normal, seed, used, size, copies)
    rows = []
    for c in candidates:
        image, pixel = pseudo_aurocs(c.score, normal, sets)
        pseudo = sum(image.values()) / len(image) if image else None
        val = _validation_auroc(c.score, validation) if validation is not None else None
        fit_s, ips = (timings or {}).get(c.name, (None, None))
        rows.append(CandidateScores(
            name=c.name, trained_on=list(c.trained_on), pseudo_auroc=image, pseudo_pixel_auroc=pixel,
            pseudo_score=pseudo, validation_auroc=val, selection_score=val if val is not None else pseudo,
            fit_s=fit_s, images_per_s=ips))
    chosen, margin = choose({r.name: r.selection_score for r in rows})
    return Selection(criterion="validation" if validation is not None else "pseudo-defects", kinds=used,
                     excluded_kinds=excluded, size=size, seed=seed, candidates=rows, chosen=chosen, margin=margin)


def regret(test_aurocs: Mapping[str, float], chosen: str) -> float:
    """The best candidate's test AUROC minus the chosen one's (0 when the choice was the best)."""
    if chosen not in test_aurocs:
        raise ConfigError(f"argument chosen={chosen!r} is not among the candidates {sorted(test_aurocs)}")
    return max(test_aurocs.values()) - test_aurocs[chosen]


def budget_order(names: Sequence[str]) -> list[str]:
    """``names`` in :data:`BUDGET_ORDER` (unlisted names after, in their given order)."""
    rank = {n: i for i, n in enumerate(BUDGET_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), list(names).index(n)))


@dataclass
class BudgetRun:
    """What :func:`fit_within_budget` fitted (in order), how long each took, and what it skipped."""

    fitted: dict[str, object] = field(default_factory=dict)
    fit_s: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def fit_within_budget(
    names: Sequence[str], fit: Callable[[str], object], budget_s: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> BudgetRun:
    """Fit candidates in :func:`budget_order` until ``budget_s`` seconds are spent: the first is
    always fitted; a next one starts only while the time spent is under the budget (``None``: no
    limit).  A fit that starts in time finishes, so the budget can be overrun by one fit."""
    if budget_s is not None and budget_s <= 0:
        raise ConfigError(f"argument budget_s={budget_s!r} must be positive seconds (or None for no limit)")
    run = BudgetRun()
    start = clock()
    for name in budget_order(names):
        if run.fitted and budget_s is not None and clock() - start >= budget_s:
            run.skipped.append(name)
            continue
        t0 = clock()
        run.fitted[name] = fit(name)
        run.fit_s[name] = clock() - t0
    return run
