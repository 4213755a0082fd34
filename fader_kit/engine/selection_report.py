"""What a run reports about choosing among its candidates: each candidate's selection score (from
normal images and pseudo-defects alone, :mod:`fader_kit.deploy.selection`) beside its test AUROC, the one
the selector chose, the one the test set would have chosen, and the regret between them.

The selection scores never see a test label; the test AUROCs are only read afterwards, to say how
good the choice was.  ``metrics.json`` carries this section wherever a run has more than one
candidate, and the selection study (``python -m fader_kit_bench.selection_study``) builds every
category-seed cell of its summary from the same function::

    report = selection_report({"ear": 0.91, "fused": 0.95}, {"ear": (0.80, 0.90), "fused": (0.78, 0.93)})
    report.chosen, report.regret  # ("fused", 0.02...)
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping

from pydantic import BaseModel, Field

from fader_kit.errors import ConfigError
from fader_kit.deploy.selection import choose, regret


class CandidateOutcome(BaseModel):
    """One candidate: its selection score (None: it could not be scored) and its test AUROCs."""

    name: str
    selection_score: float | None
    pseudo_auroc: dict[str, float] = Field(default_factory=dict, description="per pseudo-defect kind")
    test_image_auroc: float
    test_pixel_auroc: float | None = None
    same_as: str | None = Field(None, description="the candidate this one is in all but name; it was not in the race")


class SelectionReport(BaseModel):
    """The ``selection`` section of ``metrics.json``."""

    criterion: str = Field("pseudo-defects", description="what the selection scores are (see fader_kit.deploy.selection)")
    candidates: list[CandidateOutcome]
    chosen: str = Field(description="the candidate with the highest selection score (ties: the first listed)")
    margin: float | None = Field(description="the chosen one's selection score minus the runner-up's "
                                             "(a twin, see CandidateOutcome.same_as, is not a runner-up)")
    best: str = Field(description="the candidate with the highest test image AUROC (ties: the first listed)")
    chosen_image_auroc: float
    chosen_pixel_auroc: float | None
    best_image_auroc: float
    regret: float = Field(description="best_image_auroc - chosen_image_auroc (0: the selector chose the best)")
    spearman: float | None = Field(
        description="rank correlation of selection score and test image AUROC over the candidates in the "
                    "race (None: fewer than three candidates or equal scores)")

    def line(self) -> str:
        """One line for a terminal: the choice, the best, the regret."""
        return (f"selection by {self.criterion}: chosen {self.chosen} (test image AUROC {self.chosen_image_auroc:.3f}), "
                f"best {self.best} ({self.best_image_auroc:.3f}), regret {self.regret:.3f}")


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of ``a`` and ``b`` (ties ranked by their mean), or None where it
    is not defined: fewer than three pairs, or one side constant."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 3:
        return None
    with warnings.catch_warnings():  # a constant side: scipy warns and returns NaN
        warnings.simplefilter("ignore")
        rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def selection_report(scores: Mapping[str, float | None], test: Mapping[str, tuple[float, float | None]],
                     criterion: str = "pseudo-defects",
                     pseudo: Mapping[str, dict[str, float]] | None = None,
                     twins: Mapping[str, str] | None = None) -> SelectionReport:
    """The report of choosing by ``scores`` (candidate -> selection score, in the candidates' order:
    ties go to the earlier) among candidates whose test ``(image AUROC, pixel AUROC or None)`` are
    ``test``; ``pseudo``: each candidate's pseudo AUROC per kind, recorded beside.  A candidate
    without a selection score (None) is reported but cannot be chosen, and so is one of ``twins``
    (candidate -> the candidate it is in all but name), as ``fader-kit fit`` leaves it out: the
    choice, its margin and the rank correlation are over the rest."""
    if set(scores) != set(test):
        raise ConfigError(f"selection_report: scored candidates {sorted(scores)} differ from tested ones {sorted(test)}")
    twins = dict(twins or {})
    unknown = sorted(n for pair in twins.items() for n in pair if n not in scores)
    if unknown:
        raise ConfigError(f"selection_report: twins name candidates that are not scored: {unknown}")
    scored = {k: float(v) for k, v in scores.items() if v is not None and k not in twins}
    if not scored:
        raise ConfigError("selection_report: no candidate has a selection score")
    chosen, margin = choose(scored)
    image = {k: float(v[0]) for k, v in test.items()}
    best = max(image, key=lambda k: (image[k], -list(image).index(k)))
    names = list(scored)
    return SelectionReport(
        criterion=criterion,
        candidates=[CandidateOutcome(name=k, selection_score=scores[k], pseudo_auroc=dict((pseudo or {}).get(k, {})),
                                     test_image_auroc=image[k],
                                     test_pixel_auroc=test[k][1], same_as=twins.get(k)) for k in scores],
        chosen=chosen, margin=margin, best=best, chosen_image_auroc=image[chosen],
        chosen_pixel_auroc=test[chosen][1], best_image_auroc=image[best], regret=regret(image, chosen),
        spearman=spearman([scored[k] for k in names], [image[k] for k in names]))


__all__ = ["CandidateOutcome", "SelectionReport", "selection_report", "spearman"]
