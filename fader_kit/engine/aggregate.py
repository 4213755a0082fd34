"""One seed aggregation for every command: mean and spread over seeds (:func:`over_seeds`, the
one function every table, report and probe calls), the paired bootstrap interval against EAR
(and against the masker alone and the control), and its verdict.

Reads only a results folder: the rows and the per-image score details stored beside them
(:class:`~fader_kit.engine.store.DetailStore`).  ``fader-kit evaluate`` and ``fader-kit report``
both call :func:`comparisons`.
"""
from __future__ import annotations

from typing import Iterable

from pydantic import BaseModel

from fader_kit.model.pipeline import Metrics
from fader_kit.engine.stats import Comparison, ScoreDetail, SeedSummary, paired_bootstrap
from fader_kit.engine.keys import alone_key, fused_key
from fader_kit.engine.store import DetailStore, ResultRow
from fader_kit.engine.unit_kinds import ModelFacts

EAR = "ear"  # the variant name of plain EAR (no head): the "before" of every "before -> after"
CONTROL = "open_gates"  # FADeR's training with every skip kept open: what the head adds is measured against it
METRICS = ("image_auroc", "pixel_auroc")


def over_seeds(values: Iterable[float | None]) -> SeedSummary:
    """Mean and sample standard deviation of one quantity over seeds; values that are missing (None)
    or not finite are left out (``n`` says how many counted)."""
    return SeedSummary.of([v for v in values if v is not None])


def mean_over_seeds(values: Iterable[float | None]) -> float | None:
    """The mean of :func:`over_seeds`, None when no value counted."""
    summary = over_seeds(values)
    return summary.mean if summary.n else None


def mean_metrics(rows: list[Metrics]) -> Metrics:
    """Every metric's mean over seeds (None for a metric no seed measured)."""
    return Metrics(**{k: mean_over_seeds(getattr(r, k) for r in rows) for k in Metrics.model_fields})


def paired(details: DetailStore, before: list[str], after: list[str]
           ) -> tuple[dict[str, Comparison] | None, str | None]:
    """The paired bootstrap of the details under ``after`` against those under ``before`` (one key
    per seed, in the same seed order), or None and why not."""
    b: list[ScoreDetail | None] = [details.load(k) for k in before]
    a: list[ScoreDetail | None] = [details.load(k) for k in after]
    if any(d is None for d in (*b, *a)):
        return None, "score detail missing from the results folder (rerun to recompute it)"
    try:
        return paired_bootstrap(b, a), None  # type: ignore[arg-type]
    except ValueError as exc:  # e.g. test sets that differ between seeds
        return None, str(exc)


class ComparisonLine(BaseModel):
    """One line of the comparison over seeds: a (masker, variant, category) against plain EAR.

    Per metric (:data:`METRICS`): the masker alone, EAR and the variant (``after``) as mean ± spread
    over the seeds both finished; the paired bootstrap interval of after - EAR (``comparison``, or
    ``comparison_error`` saying why there is none); against the better of EAR and the masker alone
    (``vs_best``, and which one that was); and against the control (``vs_control``)."""

    masker: str
    variant: str
    category: str
    seeds: int
    table: str = ""
    data: str = ""
    profile: str = ""
    ear: dict[str, SeedSummary]
    after: dict[str, SeedSummary]
    alone: dict[str, SeedSummary] | None = None
    comparison: dict[str, Comparison] | None = None
    comparison_error: str | None = None
    vs_best: dict[str, Comparison] | None = None
    best_baseline: dict[str, str] | None = None
    vs_control: dict[str, Comparison] | None = None
    threads_mixed: list[str] | None = None

    def summaries(self, which: str) -> dict[str, SeedSummary] | None:
        """``alone``, ``ear`` or ``after``: the seed summaries per metric (None: not measured)."""
        value: dict[str, SeedSummary] | None = getattr(self, which)
        return value


def comparisons(rows: list[ResultRow], details: DetailStore) -> list[ComparisonLine]:
    """Per (masker, category, FADeR variant): the masker alone, EAR and the variant as mean ± spread
    over the seeds both finished, and the paired bootstrap interval of variant - EAR.  Rows that
    carry a fused score (:mod:`fader_kit.model.fusion`) add a line ``VARIANT+masker`` (``ear+masker`` for
    EAR's): that model's map fused with the masker's score map, against plain EAR."""
    ok = {(r.unit.masker, r.unit.variant, r.unit.category, r.unit.seed): r for r in rows if r.status == "ok"}
    out: list[ComparisonLine] = []
    for m, v, c in sorted({(m, v, c) for (m, v, c, _) in ok}):
        seeds = sorted(s for (mm, vv, cc, s) in ok if (mm, vv, cc) == (m, v, c) and (m, EAR, c, s) in ok)
        if not seeds:
            continue
        pairs = [(ok[(m, EAR, c, s)], ok[(m, v, c, s)]) for s in seeds]
        if v != EAR:
            line = comparison_row(m, v, c, pairs, [(e.work_key, f.work_key) for e, f in pairs],
                                  [{k: getattr(f, k) for k in METRICS} for _, f in pairs], details)
            control = [ok[(m, CONTROL, c, s)] for s in seeds if (m, CONTROL, c, s) in ok]
            if v != CONTROL and len(control) == len(seeds):  # what the head adds over the same training, skips open
                line.vs_control, _ = paired(details, [k.work_key for k in control], [f.work_key for _, f in pairs])
            out.append(line)
        fused = [metrics.model_dump() for metrics in (ModelFacts.of(f).fused for _, f in pairs) if metrics is not None]
        if fused and len(fused) == len(pairs):
            out.append(comparison_row(m, f"{v}+masker", c, pairs, [(e.work_key, fused_key(f.work_key)) for e, f in pairs],
                                      fused, details))
    return out


def comparison_row(masker: str, variant: str, category: str, pairs: list[tuple[ResultRow, ResultRow]],
                   detail_keys: list[tuple[str, str]], after: list[dict[str, float]], details: DetailStore
                   ) -> ComparisonLine:
    """One line of the comparison table: EAR of ``pairs`` against ``after`` (metrics per seed) and the
    paired interval from the details under ``detail_keys`` (EAR key, after key) per seed."""
    threads = {str(r.environment.get("threads", "?")) for pair in pairs for r in pair}
    facts = [ModelFacts.of(e) for e, _ in pairs]
    alone = [f.masker_alone for f in facts if f.masker_alone is not None]
    line = ComparisonLine(
        masker=masker, variant=variant, category=category, seeds=len(pairs),
        threads_mixed=sorted(threads) if len(threads) > 1 else None,
        ear={k: over_seeds(getattr(e, k) for e, _ in pairs) for k in METRICS},
        after={k: over_seeds(a[k] for a in after) for k in METRICS},
        alone={k: over_seeds(getattr(a, k) for a in alone) for k in METRICS} if alone else None)
    comparison, error = paired(details, [b for b, _ in detail_keys], [a for _, a in detail_keys])
    if comparison is None:
        line.comparison_error = error
        return line
    line.comparison = comparison
    vs_alone, _ = paired(details, [alone_key(f.masker_key) for f in facts], [a for _, a in detail_keys])
    if vs_alone is not None:  # per metric, against whichever of EAR and the masker alone is better
        line.vs_best = {k: max(comparison[k], vs_alone[k], key=lambda c: c.before_mean) for k in METRICS}
        line.best_baseline = {k: "EAR" if line.vs_best[k] is comparison[k] else "masker alone" for k in METRICS}
    return line


__all__ = ["CONTROL", "EAR", "METRICS", "ComparisonLine", "comparison_row", "comparisons", "mean_metrics", "mean_over_seeds",
           "over_seeds", "paired"]
