"""One (table, data, profile) of a benchmark report: its Markdown table in the table's layout
(``pairs``: EAR -> FADeR per masker with the paper's pair beside it; ``columns``: one column per
variant), its CSV cells and its bars (:mod:`fader_kit_bench.report`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fader_kit.engine.aggregate import comparisons
from fader_kit.engine.store import DetailStore, ResultRow
from fader_kit.engine.unit_kinds import ModelFacts

from . import paper_numbers as paper
from .report_cells import (
    DAGGER, DASH, Cell, GroupKey, GroupReport, _before_after, _fmt, _fmt_delta, _masker_header, _mean, _ordered,
    _pair, _paper_before_after, _single, _sub, category_label, cells, data_kind, paper_average, paper_cell,
)
from .tables import EAR, TABLES, TableSpec

Bars = dict[str, dict[str, tuple[float | None, float | None]]]


@dataclass
class Group:
    """What every part of one group's report reads: its rows' cells and their order."""

    key: GroupKey
    spec: TableSpec
    cs: dict[tuple[str, str, str], Cell]
    categories: list[str]
    maskers: list[str]
    variants: list[str]
    seeds: list[int]
    weights_of: dict[str, set[str]]
    bars: Bars = field(default_factory=dict)
    daggers: bool = False

    @classmethod
    def of(cls, key: GroupKey, rows: list[ResultRow]) -> "Group":
        spec = TABLES[key[0]]
        cs = cells(rows)
        maskers = _ordered((r.unit.masker for r in rows), spec.maskers)
        return cls(key, spec, cs, categories=_ordered((r.unit.category for r in rows), paper.MVTEC_ORDER + paper.VISA_ORDER),
                   maskers=maskers, variants=_ordered((r.unit.variant for r in rows), [v.name for v in spec.variants]),
                   seeds=sorted({r.unit.seed for r in rows}),
                   weights_of={m: set().union(*(c.weights for (mm, _, _), c in cs.items() if mm == m)) for m in maskers})

    def get(self, m: str, v: str, c: str) -> Cell:
        return self.cs.get((m, v, c), Cell())

    def paper(self, m: str, v: str, c: str) -> tuple[float | None, float | None]:
        """The paper's cell where this group's data is the paper's, else none."""
        return paper_cell(self.key[0], m, v, c) if data_kind(self.key[1]) == self.spec.paper_data else (None, None)

    def mean(self, m: str, v: str, metric: Callable[[Cell], float | None]) -> float | None:
        return _mean(metric(self.get(m, v, c)) for c in self.categories)

    def bar(self, label: str, m: str, v: str) -> None:
        self.bars[label] = {c: (self.get(m, v, c).image, self.get(m, v, c).pixel) for c in self.categories}


def csv_cells(g: Group) -> list[dict[str, object]]:
    """One CSV row per (masker, variant, category) with the paper's numbers beside ours."""
    table, data, profile = g.key
    out: list[dict[str, object]] = []
    for m in g.maskers:
        for v in g.variants:
            for c in g.categories:
                cell, p = g.get(m, v, c), g.paper(m, v, c)
                out.append({
                    "table": table, "data": data, "profile": profile, "masker": m, "variant": v, "category": c,
                    "seeds": cell.seeds, "status": "ok" if cell.seeds else ("failed" if cell.failed else "missing"),
                    "image_auroc": cell.image, "pixel_auroc": cell.pixel, "weights": ";".join(sorted(cell.weights)),
                    "paper_image_auroc": p[0], "paper_pixel_auroc": p[1],
                })
    return out


def _row(cells_: list[str]) -> str:
    return "| " + " | ".join(cells_) + " |"


def pairs_layout(g: Group) -> list[str]:
    """EAR -> FADeR per masker and variant, with the paper's pair beside ours; average and change rows."""
    table, data, _ = g.key
    after = [v for v in g.variants if v != EAR]
    header = ["Category"]
    for m in g.maskers:
        for v in after:
            name = _masker_header(m, g.weights_of[m]) + ("" if v == "fader" else f" ({v})")
            header += [f"{name}: ours", "paper"]
    md = [_row(header), "|" + "---|" * len(header)]
    for c in g.categories:
        line = [category_label(data, c)]
        for m in g.maskers:
            for v in after:
                line.append(_before_after(g.get(m, EAR, c), g.get(m, v, c)))
                line.append(_paper_before_after(table, g.paper(m, EAR, c), g.paper(m, v, c)))
        md.append(_row(line))
    avg, delta = ["Average"], ["Change"]
    for m in g.maskers:
        for v in after:
            _average_cells(g, m, v, avg, delta)
            g.bar(f"{m} EAR", m, EAR)
            g.bar(f"{m} {'FADeR' if v == 'fader' else v}", m, v)
    md += [_row(avg), _row(delta), "", "Cells: image / pixel AUROC, EAR -> FADeR (before -> after), on the same EAR "
           "U-Net and the same binary masks."]
    if table == "table5":
        md.append("The paper reports FADeR's image AUROC only for VisA (its EAR and pixel numbers are not given).")
    return md


def _average_cells(g: Group, m: str, v: str, avg: list[str], delta: list[str]) -> None:
    """The average and change cells of one (masker, variant) pair, ours then the paper's."""
    table, data, _ = g.key
    e_i, e_p = g.mean(m, EAR, lambda c: c.image), g.mean(m, EAR, lambda c: c.pixel)
    f_i, f_p = g.mean(m, v, lambda c: c.image), g.mean(m, v, lambda c: c.pixel)
    n_ok = sum(1 for c in g.categories if g.get(m, v, c).seeds and g.get(m, EAR, c).seeds)
    note = "" if n_ok == len(g.categories) else f" ({n_ok}/{len(g.categories)} categories)"
    avg.append(f"{_pair(e_i, e_p)} -> {_pair(f_i, f_p)}{note}")
    delta.append(f"{_fmt_delta(_sub(f_i, e_i))} / {_fmt_delta(_sub(f_p, e_p))}")
    (pe, dag) = paper_average(g.spec, data, m, EAR, g.categories)
    (pf, _) = paper_average(g.spec, data, m, v, g.categories)
    mark = f" {DAGGER}" if dag and (pe != (None, None) or pf != (None, None)) else ""
    g.daggers |= bool(mark)
    avg.append(_paper_before_after(table, pe, pf) + mark)
    delta.append(DASH if pf[0] is None or pe[0] is None else
                 f"{_fmt_delta(_sub(pf[0], pe[0]))} / {_fmt_delta(_sub(pf[1], pe[1]))}{mark}")


def columns_layout(g: Group) -> list[str]:
    """One column per variant (and masker), the paper's image AUROC beside where it has one."""
    table, data, _ = g.key
    titles = {v.name: v.title for v in g.spec.variants}
    multi = len(g.maskers) > 1
    has_paper = {(m, v): paper_cell(table, m, v, "average") != (None, None) for m in g.maskers for v in g.variants}
    header = ["Category"]
    for m in g.maskers:
        for v in g.variants:
            header.append(titles.get(v, v) + (f" [{_masker_header(m, g.weights_of[m])}]" if multi else ""))
            header += ["paper"] if has_paper[(m, v)] else []
    md = [_row(header), "|" + "---|" * len(header)]
    for c in g.categories + ["average"]:
        line = ["Average" if c == "average" else category_label(data, c)]
        for m in g.maskers:
            for v in g.variants:
                line.append(_average_cell(g, m, v) if c == "average" else _single(g.get(m, v, c)))
                if has_paper[(m, v)]:
                    line.append(_paper_average_cell(g, m, v) if c == "average" else _fmt(g.paper(m, v, c)[0]))
        md.append(_row(line))
    for m in g.maskers:
        for v in g.variants:
            g.bar(("EAR" if v == EAR else v) + (f" {m}" if multi else ""), m, v)
    return md + ["", "Cells: image / pixel AUROC; every column uses the same EAR U-Net and the same binary masks. "
                 "The paper's Table 3 reports image AUROC only, measured with DINO-ViT masks and a ViT-B/16 head "
                 "(ours: the masker named below and a small ViT head)."]


def _average_cell(g: Group, m: str, v: str) -> str:
    text = _pair(g.mean(m, v, lambda c: c.image), g.mean(m, v, lambda c: c.pixel))
    n_ok = sum(1 for k in g.categories if g.get(m, v, k).seeds)
    return text if n_ok == len(g.categories) else text + f" ({n_ok}/{len(g.categories)} categories)"


def _paper_average_cell(g: Group, m: str, v: str) -> str:
    (pi, _), dag = paper_average(g.spec, g.key[1], m, v, g.categories)
    g.daggers |= dag
    return _fmt(pi) + (f" {DAGGER}" if dag else "")


def group_table(key: GroupKey, rows: list[ResultRow], details: DetailStore | None = None) -> GroupReport:
    """The report of one group: title, the table in its layout, notes, failures; the comparisons over
    seeds (from ``details``) are returned for the lines :mod:`fader_kit_bench.report` adds."""
    g = Group.of(key, rows)
    _, data, profile = key
    seeds = g.seeds
    md = [f"### {g.spec.title} -- {data}, {profile} profile, seed{'s' if len(seeds) > 1 else ''} "
          f"{', '.join(map(str, seeds))}", ""]
    md += pairs_layout(g) if g.spec.layout == "pairs" else columns_layout(g)
    if g.daggers:
        src = "MVTec AD" if g.spec.paper_data == "mvtec" else "VisA"
        md.append(f"{DAGGER} The paper's {src} average, shown for scale: the paper has no numbers for {data} categories.")
    md.append("Maskers and weights: " + "; ".join(
        f"{m}: {', '.join(sorted(g.weights_of[m])) or 'unknown (no finished row)'}" for m in g.maskers))
    failures = [f"- {m}/{v} on {c}: {msg}" for (m, v, c), cell in sorted(g.cs.items()) for msg in cell.failed]
    if failures:
        md += ["", f"Failed units ({len(failures)}):", *failures]
    comps = comparisons(rows, details) if details is not None else []
    figures = sorted({f.figure for f in (ModelFacts.of(r) for r in rows if r.status == "ok") if f.figure})
    return GroupReport(key, md, csv_cells(g), g.bars, g.categories, figures, comps)


__all__ = ["Group", "columns_layout", "csv_cells", "group_table", "pairs_layout"]
