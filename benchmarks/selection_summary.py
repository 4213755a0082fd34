"""The selection study's summary: per category and seed, the selector's choice against the best
candidate; per category, how often it picks the best, its regret and the rank correlation; the
targets checked; every candidate's numbers (mean over seeds).

Each category-seed cell is one :func:`fader_kit.engine.selection_report.selection_report` of its
candidates (the rows of :mod:`fader_kit_bench.selection_study`), so the study and ``metrics.json``
judge a choice the same way.  A cell is counted only when every candidate of the study is in it
(a run stopped mid-cell leaves it out, and says so).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fader_kit.engine.selection_report import SelectionReport, selection_report

MEAN_REGRET_TARGET = 0.02  # the chosen detector within this of the best, in the mean over categories
MAX_REGRET_TARGET = 0.05  # ... and never further below it in any category-seed cell
BASELINE_SLACK = 0.01  # ... and at least the better of EAR and the masker alone less this, per category
BASELINE_KINDS = ("ear", "masker")
BEST_TOLERANCE = 0.001  # a choice within this of the best counts as picking the best (100 x 100 test images: 10 pairs)

Row = dict[str, Any]
Cell = tuple[str, int]


def cells(rows: Sequence[Row], expected: Sequence[str] | None = None) -> tuple[dict[Cell, list[Row]], list[Cell]]:
    """(complete cells: every ``expected`` candidate measured, default every candidate in ``rows``;
    the incomplete ones)."""
    groups: dict[Cell, list[Row]] = {}
    for r in rows:
        groups.setdefault((r["category"], int(r["seed"])), []).append(r)
    names = set(expected) if expected is not None else {r["candidate"] for r in rows}
    complete = {g: rs for g, rs in groups.items() if {r["candidate"] for r in rs} == names}
    return complete, [g for g in groups if g not in complete]


def cell_report(rs: Sequence[Row]) -> tuple[SelectionReport, float]:
    """The cell's selection report and the better test AUROC of EAR and the masker alone (best over
    maskers).  A row's ``same_as`` (absent in rows measured before it was recorded) names the
    candidate it is in all but name; such a twin is left out of the race as ``fit`` leaves it out."""
    report = selection_report({r["candidate"]: r["selection_score"] for r in rs},
                              {r["candidate"]: (r["test_auroc"], r["test_pixel_auroc"]) for r in rs},
                              twins={r["candidate"]: r["same_as"] for r in rs if r.get("same_as")})
    return report, max(r["test_auroc"] for r in rs if r["kind"] in BASELINE_KINDS)


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def cell_table(done: dict[Cell, list[Row]]) -> str:
    head = ["category", "seed", "chosen", "its test AUROC", "best", "its test AUROC", "regret", "margin",
            "Spearman", "better of EAR / masker alone", "chosen - that"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cat, seed), rs in done.items():
        rep, base = cell_report(rs)
        lines.append(f"| {cat} | {seed} | {rep.chosen} | {_f(rep.chosen_image_auroc)} | {rep.best} | "
                     f"{_f(rep.best_image_auroc)} | {_f(rep.regret)} | {_f(rep.margin)} | {_f(rep.spearman, 2)} | "
                     f"{_f(base)} | {rep.chosen_image_auroc - base:+.3f} |")
    return "\n".join(lines)


def category_stats(done: dict[Cell, list[Row]]) -> dict[str, dict[str, float]]:
    """Per category: seeds, picks-best rate, mean / max regret, mean Spearman, chosen and baseline means."""
    by_cat: dict[str, list[tuple[SelectionReport, float]]] = {}
    for (cat, _), rs in done.items():
        by_cat.setdefault(cat, []).append(cell_report(rs))
    out = {}
    for cat, reps in by_cat.items():
        rho = [r.spearman for r, _ in reps if r.spearman is not None]
        out[cat] = {"seeds": len(reps), "picks_best": float(np.mean([r.regret < BEST_TOLERANCE for r, _ in reps])),
                    "regret_mean": float(np.mean([r.regret for r, _ in reps])),
                    "regret_max": float(np.max([r.regret for r, _ in reps])),
                    "spearman": float(np.mean(rho)) if rho else float("nan"),
                    "chosen": float(np.mean([r.chosen_image_auroc for r, _ in reps])),
                    "baseline": float(np.mean([b for _, b in reps]))}
    return out


def category_table(stats: dict[str, dict[str, float]]) -> str:
    head = ["category", "seeds", f"picks the best (regret < {BEST_TOLERANCE})", "regret mean", "regret max", "Spearman (mean)",
            "chosen test AUROC", "better of EAR / masker alone", f"chosen >= that - {BASELINE_SLACK}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cat, s in stats.items():
        ok = s["chosen"] >= s["baseline"] - BASELINE_SLACK
        lines.append(f"| {cat} | {s['seeds']:.0f} | {s['picks_best']:.0%} | {_f(s['regret_mean'])} | "
                     f"{_f(s['regret_max'])} | {_f(s['spearman'], 2)} | {_f(s['chosen'])} | {_f(s['baseline'])} | "
                     f"{'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def targets(stats: dict[str, dict[str, float]]) -> str:
    """The three target checks, each with its number."""
    if not stats:
        return "no complete category-seed cell yet"
    mean = float(np.mean([s["regret_mean"] for s in stats.values()]))
    worst = max(s["regret_max"] for s in stats.values())
    below = [c for c, s in stats.items() if s["chosen"] < s["baseline"] - BASELINE_SLACK]
    checks = [
        (mean <= MEAN_REGRET_TARGET, f"mean regret over categories {mean:.3f} (target <= {MEAN_REGRET_TARGET})"),
        (worst <= MAX_REGRET_TARGET, f"worst cell regret {worst:.3f} (target <= {MAX_REGRET_TARGET})"),
        (not below, f"chosen below the better of EAR and the masker alone by more than {BASELINE_SLACK} in: "
                    + (", ".join(below) or "no category")),
    ]
    return "\n".join(f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in checks)


def candidate_table(rows: Sequence[Row]) -> str:
    """Mean over seeds per category and candidate."""
    kinds = sorted({k for r in rows for k in r["pseudo"]})
    head = ["category", "candidate", "seeds", "test AUROC", "pixel AUROC", *(f"pseudo {k}" for k in kinds),
            "selection score", "fit s", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["category"], r["candidate"]), []).append(r)
    for (cat, name), rs in groups.items():
        vals = [np.mean([r[k] for r in rs]) for k in ("test_auroc", "test_pixel_auroc")]
        vals += [np.mean([r["pseudo"][k] for r in rs]) for k in kinds]
        vals.append(np.mean([r["selection_score"] for r in rs]))
        lines.append(f"| {cat} | {name} | {len(rs)} | " + " | ".join(_f(v) for v in vals)
                     + f" | {np.mean([r['fit_s'] for r in rs]):.0f} | {np.mean([r['images_per_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def setting(rows: Sequence[Row], partial: list[Cell]) -> str:
    """The line that says where and how the rows were measured."""
    if not rows:
        return "no rows yet"
    loads = [r["load"] for r in rows]
    kinds = sorted({k for r in rows for k in r["pseudo"]})
    text = (f"CPU: {', '.join(sorted({r['cpu'] for r in rows}))}; torch threads "
            f"{', '.join(str(t) for t in sorted({r['threads'] for r in rows}))}; load average "
            f"{min(loads):.1f}-{max(loads):.1f}. Candidates: {len({r['candidate'] for r in rows})} "
            f"(maskers x score kinds); selection kinds {', '.join(kinds)} at size "
            f"{', '.join(f'{s:g}' for s in sorted({r['size'] for r in rows}))}, "
            f"{', '.join(str(c) for c in sorted({r['copies'] for r in rows}))} copies per held-out image.")
    if partial:
        text += " Incomplete cells (left out): " + ", ".join(f"{c} seed {s}" for c, s in partial) + "."
    return text


def summary(rows: Sequence[Row], expected: Sequence[str] | None = None) -> str:
    """Markdown: setting, targets, per category, per cell (complete ones, see :func:`cells`), per candidate."""
    done, partial = cells(rows, expected)
    stats = category_stats(done)
    return "\n\n".join([setting(rows, partial), targets(stats), category_table(stats), cell_table(done),
                        candidate_table(rows)])
