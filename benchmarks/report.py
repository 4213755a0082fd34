"""``fader-kit report DIR``: the results of a benchmark folder as the paper's tables.

Markdown in the paper's ``before -> after`` format (``image / pixel`` AUROC, EAR before, FADeR
after) with the paper's reported numbers beside ours, one table per (table, data, profile);
CSV files (every raw row, and the report's cells with the paper's numbers); and a bar chart of
before -> after per category.  The paper measured MVTec AD (Tables 2-4) and VisA (Table 5); for
other data (the synthetic set) there are no per-category paper numbers, so only the paper's
average is shown beside ours and it is marked with a dagger.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from fader_kit.diagnostics import Diagnostics
from fader_kit.engine.aggregate import comparisons
from fader_kit.engine.keys import safe_name
from fader_kit.engine.store import DetailStore, ResultRow, ResultStore

from . import paper_numbers as paper
from .tables import CONTROL, EAR, TABLES, TableSpec

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
            image=_mean(r.image_auroc for r in ok), pixel=_mean(r.pixel_auroc for r in ok), seeds=len(ok),
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
    comparisons: list[dict[str, object]] = field(default_factory=list)


def _masker_header(masker: str, cell_weights: set[str]) -> str:
    flag = " [random-init]" if "random-init" in cell_weights else ""
    return f"{masker}{flag}"


def render_group(key: GroupKey, rows: list[ResultRow], details: DetailStore | None = None) -> GroupReport:
    table, data, profile = key
    spec = TABLES[table]
    cs = cells(rows)
    cat_pref = paper.MVTEC_ORDER + paper.VISA_ORDER
    categories = _ordered((r.unit.category for r in rows), cat_pref)
    maskers = _ordered((r.unit.masker for r in rows), spec.maskers)
    variants = _ordered((r.unit.variant for r in rows), [v.name for v in spec.variants])
    seeds = sorted({r.unit.seed for r in rows})
    weights_of = {m: set().union(*(c.weights for (mm, _, _), c in cs.items() if mm == m)) for m in maskers}
    title = f"### {spec.title} -- {data}, {profile} profile, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    md = [title, ""]
    csv_rows: list[dict[str, object]] = []
    bars: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    daggers = False

    def get(m: str, v: str, c: str) -> Cell:
        return cs.get((m, v, c), Cell())

    for m in maskers:
        for v in variants:
            for c in categories:
                cell = get(m, v, c)
                p = paper_cell(table, m, v, c) if data_kind(data) == spec.paper_data else (None, None)
                csv_rows.append({
                    "table": table, "data": data, "profile": profile, "masker": m, "variant": v, "category": c,
                    "seeds": cell.seeds, "status": "ok" if cell.seeds else ("failed" if cell.failed else "missing"),
                    "image_auroc": cell.image, "pixel_auroc": cell.pixel, "weights": ";".join(sorted(cell.weights)),
                    "paper_image_auroc": p[0], "paper_pixel_auroc": p[1],
                })

    if spec.layout == "pairs":
        after = [v for v in variants if v != EAR]
        header = ["Category"]
        for m in maskers:
            for v in after:
                name = _masker_header(m, weights_of[m]) + ("" if v == "fader" else f" ({v})")
                header += [f"{name}: ours", "paper"]
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in categories:
            line = [category_label(data, c)]
            for m in maskers:
                for v in after:
                    e, f = get(m, EAR, c), get(m, v, c)
                    line.append(_before_after(e, f))
                    p_e = paper_cell(table, m, EAR, c) if data_kind(data) == spec.paper_data else (None, None)
                    p_f = paper_cell(table, m, v, c) if data_kind(data) == spec.paper_data else (None, None)
                    line.append(_paper_before_after(table, p_e, p_f))
            md.append("| " + " | ".join(line) + " |")
        avg, delta = ["Average"], ["Change"]
        for m in maskers:
            for v in after:
                e_i = _mean(get(m, EAR, c).image for c in categories)
                e_p = _mean(get(m, EAR, c).pixel for c in categories)
                f_i = _mean(get(m, v, c).image for c in categories)
                f_p = _mean(get(m, v, c).pixel for c in categories)
                n_ok = sum(1 for c in categories if get(m, v, c).seeds and get(m, EAR, c).seeds)
                note = "" if n_ok == len(categories) else f" ({n_ok}/{len(categories)} categories)"
                avg.append(f"{_pair(e_i, e_p)} -> {_pair(f_i, f_p)}{note}")
                delta.append(f"{_fmt_delta(_sub(f_i, e_i))} / {_fmt_delta(_sub(f_p, e_p))}")
                (pe, dag) = paper_average(spec, data, m, EAR, categories)
                (pf, _) = paper_average(spec, data, m, v, categories)
                mark = f" {DAGGER}" if dag and (pe != (None, None) or pf != (None, None)) else ""
                daggers |= bool(mark)
                avg.append(_paper_before_after(table, pe, pf) + mark)
                delta.append(DASH if pf[0] is None or pe[0] is None else
                             f"{_fmt_delta(_sub(pf[0], pe[0]))} / {_fmt_delta(_sub(pf[1], pe[1]))}{mark}")
                bars[f"{m} EAR"] = {c: (get(m, EAR, c).image, get(m, EAR, c).pixel) for c in categories}
                bars[f"{m} {'FADeR' if v == 'fader' else v}"] = {c: (get(m, v, c).image, get(m, v, c).pixel) for c in categories}
        md.append("| " + " | ".join(avg) + " |")
        md.append("| " + " | ".join(delta) + " |")
        md += ["", "Cells: image / pixel AUROC, EAR -> FADeR (before -> after), on the same EAR U-Net and the same binary masks."]
        if table == "table5":
            md.append("The paper reports FADeR's image AUROC only for VisA (its EAR and pixel numbers are not given).")
    else:
        header = ["Category"]
        titles = {v.name: v.title for v in spec.variants}
        multi = len(maskers) > 1
        for m in maskers:
            for v in variants:
                name = titles.get(v, v) + (f" [{_masker_header(m, weights_of[m])}]" if multi else "")
                header.append(name)
                if paper_cell(table, m, v, "average") != (None, None):
                    header.append("paper")
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in categories + ["average"]:
            line = ["Average" if c == "average" else category_label(data, c)]
            for m in maskers:
                for v in variants:
                    if c == "average":
                        cell_txt = _pair(_mean(get(m, v, k).image for k in categories), _mean(get(m, v, k).pixel for k in categories))
                        n_ok = sum(1 for k in categories if get(m, v, k).seeds)
                        if n_ok != len(categories):
                            cell_txt += f" ({n_ok}/{len(categories)} categories)"
                        line.append(cell_txt)
                    else:
                        line.append(_single(get(m, v, c)))
                    if paper_cell(table, m, v, "average") != (None, None):
                        if c == "average":
                            (pi, _), dag = paper_average(spec, data, m, v, categories)
                            daggers |= dag
                            line.append(_fmt(pi) + (f" {DAGGER}" if dag else ""))
                        else:
                            p = paper_cell(table, m, v, c) if data_kind(data) == spec.paper_data else (None, None)
                            line.append(_fmt(p[0]))
            md.append("| " + " | ".join(line) + " |")
        for m in maskers:
            for v in variants:
                label = ("EAR" if v == EAR else v) + (f" {m}" if multi else "")
                bars[label] = {c: (get(m, v, c).image, get(m, v, c).pixel) for c in categories}
        md += ["", "Cells: image / pixel AUROC; every column uses the same EAR U-Net and the same binary masks. "
               "The paper's Table 3 reports image AUROC only, measured with DINO-ViT masks and a ViT-B/16 head "
               "(ours: the masker named below and a small ViT head)."]
    if daggers:
        src = "MVTec AD" if spec.paper_data == "mvtec" else "VisA"
        md.append(f"{DAGGER} The paper's {src} average, shown for scale: the paper has no numbers for {data} categories.")
    md.append("Maskers and weights: " + "; ".join(f"{m}: {', '.join(sorted(weights_of[m])) or 'unknown (no finished row)'}" for m in maskers))
    failures = [f"- {m}/{v} on {c}: {msg}" for (m, v, c), cell in sorted(cs.items()) for msg in cell.failed]
    if failures:
        md += ["", f"Failed units ({len(failures)}):", *failures]
    comps = comparisons(rows, details) if details is not None else []
    md += comparison_lines(comps)
    md += _timing_lines(rows)
    figures = sorted({str(r.config.get("figure")) for r in rows if r.status == "ok" and r.config.get("figure")})
    return GroupReport(key, md, csv_rows, bars, categories, figures, comps)


# -- seeds, intervals and the masker alone: fader_kit.engine.aggregate ------------------------------


def comparison_lines(comps: list[dict[str, object]]) -> list[str]:
    if not comps:
        return []
    md = ["", "Seeds and intervals: mean ± spread (sample sd) over seeds; Δ = after - EAR with its paired bootstrap "
          "95 % interval (test images resampled, same U-Net and masks); a gain or loss only where the interval "
          "excludes 0. `+masker`: that model's map fused with the masker's score map (fader_kit.fusion).", "",
          "| Masker | Variant | Category | Seeds | masker alone (img / pix) | EAR (img / pix) | after (img / pix) "
          "| Δ image [95 % CI] | Δ pixel [95 % CI] | Δ vs the better of EAR and the masker alone (img; pix) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comps:
        def pair(prefix: str) -> str:
            i, p = r.get(f"{prefix}_image_auroc"), r.get(f"{prefix}_pixel_auroc")
            return DASH if i is None else f"{i.text()} / {p.text()}"

        cmp = r.get("comparison")
        cells_ = []
        for metric in ("image_auroc", "pixel_auroc"):
            if cmp is None:
                cells_.append(DASH)
            else:
                c = cmp[metric]
                cells_.append(f"{c.delta_mean:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] {c.verdict}")
        best = r.get("vs_best")
        best_txt = DASH if best is None else "; ".join(
            f"{best[m].delta_mean:+.3f} [{best[m].ci_low:+.3f}, {best[m].ci_high:+.3f}] vs {r['best_baseline'][m]}"
            for m in ("image_auroc", "pixel_auroc"))
        md.append(f"| {r['masker']} | {r['variant']} | {r['category']} | {r['seeds']} | {pair('alone')} | "
                  f"{pair('ear')} | {pair('after')} | {cells_[0]} | {cells_[1]} | {best_txt} |")
    errors = sorted({str(r["comparison_error"]) for r in comps if r.get("comparison_error")})
    md += [f"No interval for some rows: {e}" for e in errors]
    mixed = [f"{r['masker']}/{r['variant']}/{r['category']} ({', '.join(r['threads_mixed'])} threads)"  # type: ignore[arg-type]
             for r in comps if r.get("threads_mixed")]
    if mixed:
        md.append("Note: these rows pair or average runs made at different torch thread counts (the numbers depend "
                  "on it; rerun at one count to compare like with like): " + "; ".join(mixed))
    return md


def variant_summary_lines(comps: list[dict[str, object]]) -> list[str]:
    """Per (table, variant), over every (data, masker, category) cell with an interval: the mean Δ
    image AUROC against the better of EAR and the masker alone, in how many cells that interval is
    above 0, the worst Δ image against EAR, and the mean Δ pixel against the better baseline --
    whether a variant earns its place over what it is built from, in one line."""
    acc: dict[tuple[str, str], list[dict[str, object]]] = {}
    for r in comps:
        if r.get("vs_best") is not None and r.get("comparison") is not None:
            acc.setdefault((str(r.get("table", "")), str(r["variant"])), []).append(r)
    if not acc:
        return []
    md = ["", "## Variants over every cell", "",
          "Per variant, over every (data, masker, category) cell with seeds and intervals: Δ = variant - the "
          "better of EAR and the masker alone (per metric), mean over cells; cells whose 95 % interval is above "
          "0; the worst Δ image against EAR; and against the control (the same training with every skip open).", "",
          f"| Table | Variant | Cells | mean Δ image vs better | cells with interval > 0 | worst Δ image vs EAR "
          f"| mean Δ pixel vs better | Δ image vs `{CONTROL}` (mean; cells gain / loss) |",
          "|---|---|---|---|---|---|---|---|"]
    for (table, variant), rows in sorted(acc.items()):
        d_img = [r["vs_best"]["image_auroc"].delta_mean for r in rows]
        above = sum(1 for r in rows if r["vs_best"]["image_auroc"].ci_low > 0)
        worst = min(r["comparison"]["image_auroc"].delta_mean for r in rows)
        d_pix = [r["vs_best"]["pixel_auroc"].delta_mean for r in rows]
        ctl = [r["vs_control"]["image_auroc"] for r in rows if r.get("vs_control")]
        ctl_txt = DASH if not ctl else (f"{statistics.fmean(c.delta_mean for c in ctl):+.3f}; "
                                        f"{sum(c.verdict == 'gain' for c in ctl)} / {sum(c.verdict == 'loss' for c in ctl)}"
                                        f" of {len(ctl)}")
        md.append(f"| {table} | {variant} | {len(rows)} | {statistics.fmean(d_img):+.3f} | {above} of {len(rows)} "
                  f"| {worst:+.3f} | {statistics.fmean(d_pix):+.3f} | {ctl_txt} |")
    return md


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


def _timing_lines(rows: list[ResultRow]) -> list[str]:
    ok = [r for r in rows if r.status == "ok" and not r.reused_from]
    if not ok:
        return []
    stages: dict[str, float] = {}
    for r in ok:
        for k, v in r.timings.items():
            stages[k] = stages.get(k, 0.0) + float(v)
    total = sum(stages.values())
    env = sorted({f"fader_kit {r.environment.get('fader_kit', '?')}, torch {r.environment.get('torch', '?')}, "
                  f"python {r.environment.get('python', '?')}, device {r.device}" for r in ok})
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in stages.items() if v >= 0.05)
    return ["", f"Compute time in these rows: {total / 60:.1f} min ({parts} min). Environment: {'; '.join(env)}."]


# -- files ------------------------------------------------------------------------------------------
RAW_FIELDS = ["table", "data", "profile", "masker", "variant", "category", "seed", "status", "reason", "image_auroc",
              "pixel_auroc", "pixel_aupro", "image_f1_max", "weights", "device", "work_key", "reused_from",
              "finished_at", "seconds_total", "timings", "fader_kit", "torch"]


def write_raw_csv(rows: list[ResultRow], path: Path) -> Path:
    import json

    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RAW_FIELDS)
        w.writeheader()
        for r in rows:
            u = r.unit
            w.writerow({
                "table": u.table, "data": u.data, "profile": u.profile, "masker": u.masker, "variant": u.variant,
                "category": u.category, "seed": u.seed, "status": r.status, "reason": r.reason or "",
                "image_auroc": r.image_auroc, "pixel_auroc": r.pixel_auroc, "pixel_aupro": r.pixel_aupro,
                "image_f1_max": r.image_f1_max, "weights": r.weights, "device": r.device, "work_key": r.work_key,
                "reused_from": r.reused_from or "", "finished_at": r.finished_at,
                "seconds_total": round(sum(r.timings.values()), 3), "timings": json.dumps(r.timings),
                "fader_kit": r.environment.get("fader_kit"), "torch": r.environment.get("torch"),
            })
    return path


def diagnostics_lines(rows: list[ResultRow]) -> list[str]:
    """Head diagnostics per (masker, variant, category), mean over seeds, with the one-line verdict
    of :func:`fader_kit.diagnostics.summary_line` (rows without a head: the masks' coverage only)."""
    from fader_kit.diagnostics import summary_line

    acc: dict[tuple[str, str, str], list[Diagnostics]] = {}
    for r in rows:
        d = (r.config or {}).get("diagnostics") if r.status == "ok" else None
        if d:
            acc.setdefault((r.unit.masker, r.unit.variant, r.unit.category), []).append(Diagnostics(**d))
    if not acc:
        return []
    out = ["", "Head diagnostics (mean over seeds; gate 1 = skip open, 0 = closed; the head found the missed "
           "defects when it ranks unmasked-defect patches above normal ones with AUROC >= 0.7 and closes "
           "its gates there >= 0.1 more than on normal pixels of the same images):", ""]
    for (masker, variant, category), ds in sorted(acc.items()):
        if variant == EAR:
            continue
        out.append(f"- {masker} / {variant} / {category} ({len(ds)} seed{'s' if len(ds) > 1 else ''}): "
                   + summary_line(_mean_diagnostics(ds)))
    return out


def _mean_diagnostics(ds: list["Diagnostics"]) -> "Diagnostics":
    """Field-wise mean over seeds (None where no seed has the value); the verdict is recomputed."""
    from fader_kit.diagnostics import found_missed_defects

    def avg(dicts: list[dict]) -> dict:
        keys = dicts[0].keys()
        out = {}
        for k in keys:
            vals = [d[k] for d in dicts if d.get(k) is not None]
            if k == "found_missed_defects":
                continue
            if k == "unmasked_defect_patches":
                out[k] = int(round(sum(vals) / len(vals))) if vals else 0
            else:
                out[k] = (sum(vals) / len(vals)) if vals else None
        return out

    mask = avg([d.mask.model_dump() for d in ds])
    heads = [d.head.model_dump() for d in ds if d.head is not None]
    merged = Diagnostics(mask=mask, head=avg(heads) if heads else None)
    if merged.head is not None:
        merged.head.found_missed_defects = found_missed_defects(merged.head)
    return merged


def build_report(folder: str | Path, *, figures: bool = True) -> tuple[str, list[Path]]:
    """Render every table of a results folder; write ``report.md``, ``report.csv``,
    ``results.csv`` and the bar charts.  Returns the Markdown and the written paths."""
    folder = Path(folder)
    store = ResultStore.open_existing(folder)
    rows = store.rows()
    groups = group_rows(rows)
    out = ["# fader-kit benchmark report", "", f"Results: `{store.path}` ({len(rows)} rows)."]
    csv_rows: list[dict[str, object]] = []
    comps_all: list[dict[str, object]] = []
    written: list[Path] = []
    for key, grows in groups.items():
        if key[0] not in TABLES:
            continue
        g = render_group(key, grows, store.details)
        out += [""] + g.markdown + diagnostics_lines(grows)
        if key[0] == "coverage":
            from .coverage import coverage_section

            lines, paths = coverage_section(grows, folder, figure=figures)
            out += [""] + lines
            written += paths
        csv_rows += g.csv_rows
        comps_all += [{"table": key[0], "data": key[1], "profile": key[2], **c} for c in g.comparisons]
        if figures and g.bars and g.categories:
            from .figures import before_after_bars
            bar_path = folder / "figures" / key[0] / safe_name(f"{key[1]}-{key[2]}") / "before_after.png"
            before_after_bars(bar_path, [category_label(key[1], c) for c in g.categories],
                              {k: {category_label(key[1], c): v for c, v in s.items()} for k, s in g.bars.items()},
                              TABLES[key[0]].title + f" -- {key[1]}, {key[2]}")
            written.append(bar_path)
            out += ["", f"Figures: `{bar_path.relative_to(folder)}`"
                    + "".join(f", `{p}`" for p in g.figures)]
    out += variant_summary_lines(comps_all)
    text = "\n".join(out) + "\n"
    md_path = folder / "report.md"
    md_path.write_text(text)
    cells_path = folder / "report.csv"
    with cells_path.open("w", newline="") as fh:
        fields = ["table", "data", "profile", "masker", "variant", "category", "seeds", "status", "image_auroc",
                  "pixel_auroc", "weights", "paper_image_auroc", "paper_pixel_auroc"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(csv_rows)
    raw_path = write_raw_csv(rows, folder / "results.csv")
    cmp_path = write_comparisons_csv(comps_all, folder / "comparisons.csv")
    return text, [md_path, cells_path, raw_path, cmp_path, *written]


def write_comparisons_csv(comps: list[dict[str, object]], path: Path) -> Path:
    """One line per (table, masker, variant, category): seed means and spreads, Δ and its interval."""
    fields = ["table", "data", "profile", "masker", "variant", "category", "seeds"]
    for name in ("alone", "ear", "after"):
        for metric in ("image_auroc", "pixel_auroc"):
            fields += [f"{name}_{metric}_mean", f"{name}_{metric}_std"]
    for metric in ("image_auroc", "pixel_auroc"):
        fields += [f"delta_{metric}", f"delta_{metric}_ci_low", f"delta_{metric}_ci_high", f"verdict_{metric}"]
    for metric in ("image_auroc", "pixel_auroc"):
        fields += [f"best_baseline_{metric}", f"delta_best_{metric}", f"delta_best_{metric}_ci_low",
                   f"delta_best_{metric}_ci_high"]
    for metric in ("image_auroc", "pixel_auroc"):
        fields += [f"delta_control_{metric}", f"delta_control_{metric}_ci_low", f"delta_control_{metric}_ci_high"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in comps:
            line = {k: r.get(k) for k in ("table", "data", "profile", "masker", "variant", "category", "seeds")}
            for name in ("alone", "ear", "after"):
                for metric in ("image_auroc", "pixel_auroc"):
                    summ = r.get(f"{name}_{metric}")
                    line[f"{name}_{metric}_mean"] = None if summ is None else summ.mean
                    line[f"{name}_{metric}_std"] = None if summ is None else summ.std
            cmp = r.get("comparison")
            for metric in ("image_auroc", "pixel_auroc"):
                if cmp is not None:
                    c = cmp[metric]
                    line.update({f"delta_{metric}": c.delta_mean, f"delta_{metric}_ci_low": c.ci_low,
                                 f"delta_{metric}_ci_high": c.ci_high, f"verdict_{metric}": c.verdict})
            best = r.get("vs_best")
            for metric in ("image_auroc", "pixel_auroc"):
                if best is not None:
                    b = best[metric]
                    line.update({f"best_baseline_{metric}": r["best_baseline"][metric],
                                 f"delta_best_{metric}": b.delta_mean, f"delta_best_{metric}_ci_low": b.ci_low,
                                 f"delta_best_{metric}_ci_high": b.ci_high})
            ctl = r.get("vs_control")
            for metric in ("image_auroc", "pixel_auroc"):
                if ctl is not None:
                    k = ctl[metric]
                    line.update({f"delta_control_{metric}": k.delta_mean, f"delta_control_{metric}_ci_low": k.ci_low,
                                 f"delta_control_{metric}_ci_high": k.ci_high})
            w.writerow(line)
    return path
