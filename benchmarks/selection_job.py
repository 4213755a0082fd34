"""``fader-kit bench selection``: does ``fit``'s selector pick the detector the test set would?

Every score kind of every masker (``--maskers``; default ``patch_stats``, ``msflow``, ``ami_net``) is a
candidate detector, one row of the ``selection`` table each: the masker alone, plain EAR, EAR with
the FADeR head (the profile's ``pseudo_focused`` head), and EAR fused with the masker's map.  Per
category and seed a fifth of the normal training images is held out; each masker and every
kind's parts are fitted on the rest (:func:`fader_kit.engine.selection_run.measure_masker`, the
measurement ``fader-kit evaluate --select`` and the selection study make), and each candidate gets

- its *selection score*: the mean pseudo-defect AUROC on the held-out images over the defect
  kinds no candidate trained on (what ``fit --score auto`` ranks by; no test label read);
- its test image / pixel AUROC (the row's ``image_auroc`` / ``pixel_auroc``), read only to judge
  the choice afterwards.

A masker's four candidates are measured together (their parts share one fit) and kept in the
results folder's cache, so each row is written as soon as its masker is measured and a rerun
skips what exists; with ``--ear-masks blobs`` (the default) one EAR U-Net per category and seed
serves every masker.  The report (:func:`report_section`) says per category and seed which
candidate the selector chose, the best one, the regret and the rank correlation, and checks the
targets (:mod:`fader_kit_bench.selection_summary`).  Unlike the selection study, the test images
do not change with the seed (``--data-seed`` picks synthetic data), as in every bench table.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from fader_kit.data.pseudo_defects import DEFAULT_KINDS, DEFAULT_SIZE
from fader_kit.engine import keys
from fader_kit.engine.jobs import Head, JobKind, PlannedUnit, RowFacts, UnitContext, register_job_kind
from fader_kit.engine.pace import cpu_model
from fader_kit.engine.selection_run import CandidateMeasure, MaskerCandidates, measure_masker
from fader_kit.engine.sources import MaskSource
from fader_kit.engine.store import ResultRow
from fader_kit.engine.unit_kinds import load_average
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys
from fader_kit.maskers.registry import default_registry
from fader_kit.util.files import file_lock, write_json_atomic

TABLE = "selection"
HOLDOUT = 0.2  # the share of the normal training images held out for the pseudo-defects
COPIES = 3  # defective copies of each held-out image per defect kind


class SelectionFacts(RowFacts):
    """One candidate's row besides its test AUROC: pseudo AUROC per defect kind (image, pixel), the
    selection score, the kinds its learned parts trained on, what fitting it alone costs, its test
    throughput, and the split and setting it was measured with."""

    pseudo: dict[str, float] = {}
    pseudo_pixel: dict[str, float] = {}
    selection_score: float = float("nan")
    trained_on: list[str] = []
    fit_s: float = float("nan")
    images_per_s: float = float("nan")
    n_fit: int = 0
    n_held_out: int = 0
    n_test: int = 0
    size: float = DEFAULT_SIZE
    copies: int = COPIES
    head: str = Field("", description="the FADeR head variant of the 'fader' candidate")
    cpu: str = ""
    load: float = float("nan")
    same_as: str | None = Field(None, description="the score kind this candidate is in all but name (not in the race)")


def masker_candidates(context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                      ) -> tuple[dict[str, Any], dict[str, int]]:
    """The four candidates of ``pu``'s masker, measured once: read from the results folder's cache
    when a unit of another kind measured them, else measured and kept there (under a lock, so
    parallel workers measure each masker once); and what this call fitted and trained."""
    folder = context.out / "cache" / TABLE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pu.keys.masks}.json"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return dict(json.loads(path.read_text())), {}
        g, s = context.grid, bench.settings
        assert pu.head.config is not None  # the table's heads carry the FADeR head of the 'fader' candidate
        ear = folder / f"ear-{pu.keys.ear}.pt"
        with file_lock(ear.with_suffix(".lock")):  # one EAR U-Net per category and seed, for every masker
            trained = {"maskers_fitted": 1, "ear_trained": int(g.ear_masks == "masker" or not ear.is_file())}
            found: MaskerCandidates = measure_masker(
                bench.split(), pu.source.name, g.profile, pu.head.config, registry=bench.registry or default_registry(), seed=s.seed,
                device=bench.device, masker_options=dict(pu.source.options), ear_masks=g.ear_masks, holdout=HOLDOUT,
                kinds=DEFAULT_KINDS, size=DEFAULT_SIZE, copies=COPIES, ear_cache=ear,
                log=lambda _: None)
        payload = {"n_fit": found.n_fit, "n_held_out": found.n_held, "load": load_average(),
                   "candidates": {c.name: {**_measure_json(c), "fit_s": found.fit_s[c.name]} for c in found.measures}}
        write_json_atomic(path, payload)
        return payload, trained


def _measure_json(c: CandidateMeasure) -> dict[str, Any]:
    return {"pseudo": c.pseudo, "pseudo_pixel": c.pseudo_pixel, "selection_score": c.selection_score,
            "test_image_auroc": c.test_image_auroc, "test_pixel_auroc": c.test_pixel_auroc,
            "images_per_s": c.images_per_s, "trained_on": list(c.trained_on), "same_as": c.same_as}


class SelectionJob(JobKind):
    """One candidate detector (a masker and a score kind) of the selection table."""

    name = TABLE
    facts = SelectionFacts
    needs_unet = False  # the unit trains its own U-Net on the fit share of the normal images
    needs_masks = False  # ... and fits its own masker there

    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        s, g = bench.settings, context.grid
        cell = keys.digest({"selection_ear": keys.ear_key(bench.data_key, s.category, g.profile, s.seed),
                            "holdout": HOLDOUT, "ear_masks": g.ear_masks})
        masker = keys.digest({
            "selection": cell, "masker": bench.masks_key(source), "profile": g.profile.digest(),
            "head": None if head.config is None else head.config.key_payload(), "kinds": list(DEFAULT_KINDS),
            "size": DEFAULT_SIZE, "copies": COPIES})
        return UnitKeys(masker, cell, keys.digest({"selection_candidate": masker, "kind": head.name}))

    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        payload, trained = masker_candidates(context, pu, bench)
        c = payload["candidates"][pu.head.name]
        facts = SelectionFacts(
            pseudo=c["pseudo"], pseudo_pixel=c["pseudo_pixel"], selection_score=c["selection_score"],
            trained_on=c["trained_on"], fit_s=c["fit_s"], images_per_s=c["images_per_s"], n_fit=payload["n_fit"],
            n_held_out=payload["n_held_out"], n_test=int(bench.split().test.shape[0]), size=DEFAULT_SIZE,
            copies=COPIES, head=pu.head.title, cpu=cpu_model(), load=payload["load"], trained=trained,
            same_as=c.get("same_as"))
        row = ResultRow(**context.row_base(pu), status="ok", timings={"fit": c["fit_s"]}, config=facts.stored(),
                        image_auroc=c["test_image_auroc"], pixel_auroc=c["test_pixel_auroc"])
        return row, {}


register_job_kind(SelectionJob())


def summary_rows(rows: list[ResultRow]) -> list[dict[str, Any]]:
    """The finished rows of the selection table as the selection summary reads them
    (:mod:`fader_kit_bench.selection_summary`)."""
    out = []
    for r in rows:
        if r.status != "ok" or r.unit.table != TABLE:
            continue
        f = SelectionFacts.of(r)
        out.append({
            "data": r.unit.data, "category": r.unit.category, "seed": r.unit.seed, "masker": r.unit.masker,
            "kind": r.unit.variant, "candidate": f"{r.unit.masker}:{r.unit.variant}", "pseudo": f.pseudo,
            "selection_score": f.selection_score, "test_auroc": r.image_auroc, "test_pixel_auroc": r.pixel_auroc,
            "fit_s": f.fit_s, "images_per_s": f.images_per_s, "threads": int(r.environment.get("threads", "0") or 0),
            "load": f.load, "cpu": f.cpu, "size": f.size, "copies": f.copies,
            "same_as": f.same_as and f"{r.unit.masker}:{f.same_as}"})
    return out


def report_section(key: tuple[str, str, str], rows: list[ResultRow]) -> list[str]:
    """The selection table's Markdown for one (table, data, profile) group: the selection summary of
    its complete category-seed cells (every candidate measured)."""
    from .selection_summary import summary

    found = summary_rows(rows)
    failed = [f"{r.unit.label()}: {r.reason}" for r in rows if r.status != "ok"]
    return [f"## Detector selection -- {key[1]}, profile {key[2]}", "",
            "Each candidate is fitted on four fifths of the normal training images; its selection score is the mean "
            "pseudo-defect AUROC on the held-out fifth (no test label read); the chosen one is what "
            "`fader-kit fit --score auto --masker auto` would ship from those candidates; regret = the best "
            "candidate's test image AUROC minus the chosen one's.", "",
            summary(found, sorted({r["candidate"] for r in found})) if found else "no finished row yet",
            *(["", "Failed: " + "; ".join(failed)] if failed else [])]


__all__ = ["SelectionFacts", "SelectionJob", "TABLE", "masker_candidates", "report_section", "summary_rows"]

