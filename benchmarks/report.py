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
from pathlib import Path

from fader_kit.model.diagnostics import Diagnostics
from fader_kit.engine.aggregate import ComparisonLine, mean_over_seeds
from fader_kit.engine.keys import safe_name
from fader_kit.engine.store import DetailStore, ResultRow, ResultStore
from fader_kit.engine.unit_kinds import ModelFacts
from fader_kit.engine.stats import Comparison

from .report_cells import DASH, GroupKey, GroupReport, category_label, group_rows
from .report_group import group_table
from .selection_job import report_section
from .tables import CONTROL, EAR, TABLES


def render_group(key: GroupKey, rows: list[ResultRow], details: DetailStore | None = None) -> GroupReport:
    """One group's report (:func:`fader_kit_bench.report_group.group_table`) with its comparison
    over seeds and its compute time."""
    report = group_table(key, rows, details)
    report.markdown += comparison_lines(report.comparisons) + _timing_lines(rows)
    return report


# -- seeds, intervals and the masker alone: fader_kit.engine.aggregate ------------------------------


def comparison_lines(comps: list[ComparisonLine]) -> list[str]:
    if not comps:
        return []
    md = ["", "Seeds and intervals: mean ± spread (sample sd) over seeds; Δ = after - EAR with its paired bootstrap "
          "95 % interval (test images resampled, same U-Net and masks); a gain or loss only where the interval "
          "excludes 0. `+masker`: that model's map fused with the masker's score map (fader_kit.model.fusion).", "",
          "| Masker | Variant | Category | Seeds | masker alone (img / pix) | EAR (img / pix) | after (img / pix) "
          "| Δ image [95 % CI] | Δ pixel [95 % CI] | Δ vs the better of EAR and the masker alone (img; pix) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comps:
        def pair(which: str) -> str:
            s = r.summaries(which)
            return DASH if s is None else f"{s['image_auroc'].text()} / {s['pixel_auroc'].text()}"

        cmp = r.comparison
        cells_ = [DASH if cmp is None else f"{cmp[m].delta_mean:+.3f} [{cmp[m].ci_low:+.3f}, {cmp[m].ci_high:+.3f}] "
                  f"{cmp[m].verdict}" for m in ("image_auroc", "pixel_auroc")]
        best, base = r.vs_best, r.best_baseline
        best_txt = DASH if best is None or base is None else "; ".join(
            f"{best[m].delta_mean:+.3f} [{best[m].ci_low:+.3f}, {best[m].ci_high:+.3f}] vs {base[m]}"
            for m in ("image_auroc", "pixel_auroc"))
        md.append(f"| {r.masker} | {r.variant} | {r.category} | {r.seeds} | {pair('alone')} | "
                  f"{pair('ear')} | {pair('after')} | {cells_[0]} | {cells_[1]} | {best_txt} |")
    errors = sorted({r.comparison_error for r in comps if r.comparison_error})
    md += [f"No interval for some rows: {e}" for e in errors]
    mixed = [f"{r.masker}/{r.variant}/{r.category} ({', '.join(r.threads_mixed)} threads)"
             for r in comps if r.threads_mixed]
    if mixed:
        md.append("Note: these rows pair or average runs made at different torch thread counts (the numbers depend "
                  "on it; rerun at one count to compare like with like): " + "; ".join(mixed))
    return md


def variant_summary_lines(comps: list[ComparisonLine]) -> list[str]:
    """Per (table, variant), over every (data, masker, category) cell with an interval: the mean Δ
    image AUROC against the better of EAR and the masker alone, in how many cells that interval is
    above 0, the worst Δ image against EAR, and the mean Δ pixel against the better baseline --
    whether a variant earns its place over what it is built from, in one line."""
    acc: dict[tuple[str, str], list[tuple[dict[str, Comparison], dict[str, Comparison], ComparisonLine]]] = {}
    for r in comps:
        if r.vs_best is not None and r.comparison is not None:
            acc.setdefault((r.table, r.variant), []).append((r.vs_best, r.comparison, r))
    if not acc:
        return []
    md = ["", "## Variants over every cell", "",
          "Per variant, over every (data, masker, category) cell with seeds and intervals: Δ = variant - the "
          "better of EAR and the masker alone (per metric), mean over cells; cells whose 95 % interval is above "
          "0; the worst Δ image against EAR; and against the control (the same training with every skip open).", "",
          f"| Table | Variant | Cells | mean Δ image vs better | cells with interval > 0 | worst Δ image vs EAR "
          f"| mean Δ pixel vs better | Δ image vs `{CONTROL}` (mean; cells gain / loss) |",
          "|---|---|---|---|---|---|---|---|"]
    for (table, variant), rows in sorted(acc.items(), key=lambda kv: kv[0]):
        d_img = [best["image_auroc"].delta_mean for best, _, _ in rows]
        above = sum(1 for best, _, _ in rows if best["image_auroc"].ci_low > 0)
        worst = min(cmp["image_auroc"].delta_mean for _, cmp, _ in rows)
        d_pix = [best["pixel_auroc"].delta_mean for best, _, _ in rows]
        ctl = [r.vs_control["image_auroc"] for _, _, r in rows if r.vs_control]
        ctl_txt = DASH if not ctl else (f"{statistics.fmean(c.delta_mean for c in ctl):+.3f}; "
                                        f"{sum(c.verdict == 'gain' for c in ctl)} / {sum(c.verdict == 'loss' for c in ctl)}"
                                        f" of {len(ctl)}")
        md.append(f"| {table} | {variant} | {len(rows)} | {statistics.fmean(d_img):+.3f} | {above} of {len(rows)} "
                  f"| {worst:+.3f} | {statistics.fmean(d_pix):+.3f} | {ctl_txt} |")
    return md


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
    of :func:`fader_kit.model.diagnostics.summary_line` (rows without a head: the masks' coverage only)."""
    from fader_kit.model.diagnostics import summary_line

    acc: dict[tuple[str, str, str], list[Diagnostics]] = {}
    for r in rows:
        d = ModelFacts.of(r).diagnostics if r.status == "ok" else None
        if d is not None:
            acc.setdefault((r.unit.masker, r.unit.variant, r.unit.category), []).append(d)
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
    from fader_kit.model.diagnostics import found_missed_defects

    def avg(dicts: list[dict]) -> dict:
        keys = dicts[0].keys()
        out = {}
        for k in keys:
            if k == "found_missed_defects":
                continue
            mean = mean_over_seeds(d.get(k) for d in dicts)
            out[k] = (int(round(mean)) if mean is not None else 0) if k == "unmasked_defect_patches" else mean
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
    comps_all: list[ComparisonLine] = []
    written: list[Path] = []
    for key, grows in groups.items():
        if key[0] not in TABLES:
            continue
        if TABLES[key[0]].layout == "selection":
            out += [""] + report_section(key, grows)
            continue
        g = render_group(key, grows, store.details)
        out += [""] + g.markdown + diagnostics_lines(grows)
        if key[0] == "coverage":
            from .coverage import coverage_section

            lines, paths = coverage_section(grows, folder, figure=figures)
            out += [""] + lines
            written += paths
        csv_rows += g.csv_rows
        comps_all += [c.model_copy(update={"table": key[0], "data": key[1], "profile": key[2]}) for c in g.comparisons]
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


def write_comparisons_csv(comps: list[ComparisonLine], path: Path) -> Path:
    """One line per (table, masker, variant, category): seed means and spreads, Δ and its interval."""
    metrics = ("image_auroc", "pixel_auroc")
    fields = ["table", "data", "profile", "masker", "variant", "category", "seeds"]
    fields += [f"{name}_{m}_{s}" for name in ("alone", "ear", "after") for m in metrics for s in ("mean", "std")]
    fields += [f"{k}{m}{s}" for m in metrics for k, s in (("delta_", ""), ("delta_", "_ci_low"), ("delta_", "_ci_high"),
                                                          ("verdict_", ""))]
    fields += [f"{k}{m}{s}" for m in metrics for k, s in (("best_baseline_", ""), ("delta_best_", ""),
                                                          ("delta_best_", "_ci_low"), ("delta_best_", "_ci_high"))]
    fields += [f"delta_control_{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high")]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in comps:
            w.writerow(_comparison_csv_line(r, metrics))
    return path


def _comparison_csv_line(r: ComparisonLine, metrics: tuple[str, ...]) -> dict[str, object]:
    line: dict[str, object] = {"table": r.table, "data": r.data, "profile": r.profile, "masker": r.masker,
                               "variant": r.variant, "category": r.category, "seeds": r.seeds}
    for name in ("alone", "ear", "after"):
        summaries = r.summaries(name)
        for m in metrics:
            line[f"{name}_{m}_mean"] = None if summaries is None else summaries[m].mean
            line[f"{name}_{m}_std"] = None if summaries is None else summaries[m].std
    for m in metrics:
        if r.comparison is not None:
            c = r.comparison[m]
            line.update({f"delta_{m}": c.delta_mean, f"delta_{m}_ci_low": c.ci_low, f"delta_{m}_ci_high": c.ci_high,
                         f"verdict_{m}": c.verdict})
        if r.vs_best is not None and r.best_baseline is not None:
            b = r.vs_best[m]
            line.update({f"best_baseline_{m}": r.best_baseline[m], f"delta_best_{m}": b.delta_mean,
                         f"delta_best_{m}_ci_low": b.ci_low, f"delta_best_{m}_ci_high": b.ci_high})
        if r.vs_control is not None:
            k = r.vs_control[m]
            line.update({f"delta_control_{m}": k.delta_mean, f"delta_control_{m}_ci_low": k.ci_low,
                         f"delta_control_{m}_ci_high": k.ci_high})
    return line
