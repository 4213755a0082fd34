"""The cells of a benchmark report: our numbers per (masker, variant, category) over seeds, the
paper's numbers beside them, and how a cell is written (:mod:`fader_kit_bench.report`)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Iterable

from fader_kit.engine.aggregate import ComparisonLine, mean_over_seeds
from fader_kit.engine.store import ResultRow

from . import paper_numbers as paper
from .tables import EAR, TABLES, TableSpec

DASH = "--"
DAGGER = "†"


@dataclass
class Cell:
    """Our aggregated numbers for one (masker, variant, category): mean over finished seeds."""

    image: float | None = None
    pixel: float | None = None
    seeds: int = 0
    failed: list[str] = field(default_factory=list)
    weights: set[str] = field(default_factory=set)


def _fmt(v: float | None) -> str:
    return DASH if v is None else f"{v:.3f}"


def _fmt_delta(v: float | None) -> str:
    return DASH if v is None else f"{v:+.3f}"


def _pair(image: float | None, pixel: float | None) -> str:
    return f"{_fmt(image)} / {_fmt(pixel)}"


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def data_kind(data: str) -> str:
    return data.split(":", 1)[0]


def category_label(data: str, category: str) -> str:
    return paper.category_title(category) if data_kind(data) in ("mvtec", "visa") else category


# -- the paper's numbers ---------------------------------------------------------------------------
def paper_cell(table: str, masker: str, variant: str, category: str) -> tuple[float | None, float | None]:
    """The paper's (image, pixel) AUROC for one cell; ``category='average'`` for the stated average.
    ``(None, None)`` where the paper has no such number."""
    if table in ("table2", "table4"):
        col = (paper.TABLE2 if table == "table2" else paper.TABLE4).get(masker)
        if col is None or category not in col:
            return None, None
        c = col[category]
        return (c.ear_image, c.ear_pixel) if variant == EAR else (c.fader_image, c.fader_pixel)
    if table == "table3":
        col = paper.TABLE3.get("ours" if variant == "fader" else variant)
        return (col.get(category), None) if col else (None, None)
    if table == "table5":
        return (paper.TABLE5["fader"].get(category), None) if variant != EAR else (None, None)
    return None, None


def paper_average(spec: TableSpec, data: str, masker: str, variant: str, categories: list[str]) -> tuple[tuple[float | None, float | None], bool]:
    """The paper's average beside ours, and whether it is the paper's *whole-table* average
    standing in for data the paper did not measure (marked with a dagger).

    On the paper's own data: its printed average when we ran every category, else the mean of
    its values over the same categories (so the two averages cover the same ground)."""
    paper_cats = paper.MVTEC_ORDER if spec.paper_data == "mvtec" else paper.VISA_ORDER
    if data_kind(data) == spec.paper_data and categories and all(c in paper_cats for c in categories):
        if set(categories) == set(paper_cats):
            return paper_cell(spec.name, masker, variant, "average"), False
        vals = [paper_cell(spec.name, masker, variant, c) for c in categories]
        return (_mean(v[0] for v in vals), _mean(v[1] for v in vals)), False
    return paper_cell(spec.name, masker, variant, "average"), True


# -- aggregation ------------------------------------------------------------------------------------
GroupKey = tuple[str, str, str]  # (table, data, profile)


def group_rows(rows: Iterable[ResultRow]) -> dict[GroupKey, list[ResultRow]]:
    groups: dict[GroupKey, list[ResultRow]] = {}
    for r in rows:
        groups.setdefault((r.unit.table, r.unit.data, r.unit.profile), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (list(TABLES).index(kv[0][0]) if kv[0][0] in TABLES else 99, kv[0])))


def cells(rows: list[ResultRow]) -> dict[tuple[str, str, str], Cell]:
    """(masker, variant, category) -> mean over seeds of the finished rows (failures listed)."""
    acc: dict[tuple[str, str, str], list[ResultRow]] = {}
    for r in rows:
        acc.setdefault((r.unit.masker, r.unit.variant, r.unit.category), []).append(r)
    out = {}
    for key, rs in acc.items():
        ok = [r for r in rs if r.status == "ok"]
        out[key] = Cell(
            image=mean_over_seeds(r.image_auroc for r in ok), pixel=mean_over_seeds(r.pixel_auroc for r in ok),
            seeds=len(ok),
            failed=[f"seed {r.unit.seed}: {r.reason}" for r in rs if r.status != "ok"],
            weights={r.weights for r in rs if r.weights},
        )
    return out


def _ordered(values: Iterable[str], preferred: Iterable[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    pref = [p for p in preferred if p in values]
    return pref + sorted(v for v in values if v not in pref)


# -- Markdown -----------------------------------------------------------------------------------------
@dataclass
class GroupReport:
    key: GroupKey
    markdown: list[str]
    csv_rows: list[dict[str, object]]
    bars: dict[str, dict[str, tuple[float | None, float | None]]]
    categories: list[str]
    figures: list[str]
    comparisons: list[ComparisonLine] = field(default_factory=list)


def _masker_header(masker: str, cell_weights: set[str]) -> str:
    flag = " [random-init]" if "random-init" in cell_weights else ""
    return f"{masker}{flag}"



def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _single(cell: Cell) -> str:
    if cell.seeds:
        return _pair(cell.image, cell.pixel)
    return "failed" if cell.failed else DASH


def _before_after(e: Cell, f: Cell) -> str:
    if not e.seeds and not f.seeds:
        return "failed" if (e.failed or f.failed) else DASH
    return f"{_pair(e.image, e.pixel)} -> {_pair(f.image, f.pixel)}"


def _paper_before_after(table: str, pe: tuple[float | None, float | None], pf: tuple[float | None, float | None]) -> str:
    if pe == (None, None) and pf == (None, None):
        return DASH
    if table == "table5":  # the paper gives FADeR's image AUROC only
        return f"-> {_fmt(pf[0])}"
    return f"{_pair(*pe)} -> {_pair(*pf)}"
