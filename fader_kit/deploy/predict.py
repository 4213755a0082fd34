"""``fader-kit predict``: stream image files through a detector into ``predictions.csv`` and overlays.

Memory does not grow with the number of images: files are decoded in batches (the next batch on
worker threads while the current one is scored), each batch's rows are appended to the CSV and
flushed to disk, and only flagged images (``maps="all"``: every image) get an overlay PNG.  A file
that cannot be read gets a row with its error and a line on stderr; the others go on.

A run survives being killed at any point, and a rerun into the same folder resumes:

* a lock (``predict.lock``, an OS file lock released when the process dies) refuses a second run
  into the same folder while one is at work;
* ``predict.json`` ties the folder to the detector -- the digest of every one of its files, the raw
  image and pixel thresholds, the decision and ``--maps`` -- and a rerun with any other is refused;
* the CSV gets its header, flushed to disk, before any image is scored; on reopening, a torn last
  line (a kill mid-write) is cut off, rows with an error and rows of files that changed since are
  dropped (their files are predicted again);
* rows are keyed by the file's resolved path, size and modification time, so a path typed another
  way is not predicted twice and a file replaced by a new one is;
* overlays, like every other file, are written to a fresh temporary file, synced and renamed.

Text cells that a spreadsheet would run as a formula (starting with ``= + - @``, a tab or a carriage
return) are written with a leading apostrophe.
"""
from __future__ import annotations

import csv
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from fader_kit.errors import ConfigError
from fader_kit.deploy.overlays import heat_lut, overlay, overlay_name
from fader_kit.deploy.predict_folder import (COLUMNS, CSV_NAME, FORMULA_STARTS, LOCK_NAME, MAPS_DIR, RUN_NAME, TEXT_COLUMNS, RunLock,
                             check_run, detector_identity, escape_cell, file_key, open_csv, run_identity,
                             unescape_cell, write_rows)

#: The names callers import from here (the folder's files: :mod:`fader_kit.deploy.predict_folder`; the overlays:
#: :mod:`fader_kit.deploy.overlays`).
__all__ = ["COLUMNS", "CSV_NAME", "EXIT_SOME_FAILED", "FORMULA_STARTS", "LOCK_NAME", "MAPS_DIR", "RUN_NAME",
           "TEXT_COLUMNS", "Maps", "PredictSummary", "RunLock", "Scorer", "check_run", "decoded_batches",
           "detector_identity", "escape_cell", "file_key", "heat_lut", "open_csv", "overlay", "overlay_name",
           "predict_files", "run_identity", "timing_report", "unescape_cell", "write_rows"]

Maps = Literal["flagged", "all", "none"]
EXIT_SOME_FAILED = 3  # some files could not be read (2 is a usage error, 1 a bug)


class Scorer(Protocol):
    """What predict needs of a model: a side, a calibration and batch scoring (torch or ONNX)."""

    image_size: int

    def score_batch(self, images: Tensor, watch: Any = None) -> tuple[Tensor, Tensor]: ...


@dataclass
class PredictSummary:
    total: int = 0
    predicted: int = 0
    flagged: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    overlays: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0
    engine: str = "torch"  # what scored: the scorer's ``engine`` and ``threads`` where it has them
    threads: int = 0

    @property
    def exit_status(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


# -- decoding ---------------------------------------------------------------------------------------
def _decode(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]] | Exception:
    from fader_kit.deploy.imagefiles import load_array

    try:
        return load_array(path, size)
    except Exception as exc:  # any unreadable file is reported by name and skipped
        return exc


def decoded_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int
                    ) -> Iterator[list[tuple[Path, tuple[np.ndarray, tuple[int, int]] | Exception]]]:
    """Batches of ``(path, (array, original size) or the error)``, the next batch decoding on
    ``workers`` threads while the caller works on the current one (PIL releases the GIL)."""
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    if workers <= 0:
        for chunk in chunks:
            yield [(p, _decode(p, size)) for p in chunk]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(chunk: list[Path]) -> list[Future]:
            return [pool.submit(_decode, p, size) for p in chunk]

        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            current = pending
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            yield [(p, f.result()) for p, f in zip(chunk, current)]



# -- the loop ---------------------------------------------------------------------------------------
def predict_files(
    scorer: Scorer,
    decision: Any,
    paths: Sequence[Path],
    out: str | Path,
    *,
    identity: dict[str, Any],
    maps: Maps = "flagged",
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
    err: Any = None,
) -> PredictSummary:
    """Predict ``paths`` into ``out`` (see the module notes); ``decision`` is a
    :class:`fader_kit.deploy.detector.Decision`, ``identity`` what ties the CSV to this model and decision
    (:func:`run_identity`)."""
    from fader_kit.util.files import remove_stale_temps, writable_folder

    if batch_size < 1:
        raise ConfigError(f"argument --batch-size {batch_size}: expected at least 1")
    out = writable_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        remove_stale_temps(out)
        remove_stale_temps(out / MAPS_DIR)
        check_run(out, identity, overwrite)
        return _predict_locked(scorer, decision, paths, out, maps=maps, batch_size=batch_size, workers=workers,
                               progress=progress, err=err or sys.stderr)



def _todo(paths: Sequence[Path], csv_path: Path) -> tuple[dict[Path, tuple[str, str, str]], dict[str, Path], list[Path]]:
    """``(each path's key, one path per resolved file, the paths still to predict)``: the CSV repaired
    (:func:`open_csv`), and the rows of files that changed since they were written dropped."""
    rows_done = open_csv(csv_path)
    keys: dict[Path, tuple[str, str, str]] = {}
    for p in paths:
        try:
            keys[p] = file_key(p)
        except OSError:  # vanished since it was listed: decoding reports it
            keys[p] = (str(Path(p).absolute()), "", "")
    done_keys = {(unescape_cell(r["path"]), r["file_size"], r["file_mtime_ns"]) for r in rows_done}
    by_path: dict[str, Path] = {}
    for p in paths:  # one entry per resolved file, whatever way it was typed
        by_path.setdefault(keys[p][0], p)
    todo = [p for key, p in by_path.items() if keys[p] not in done_keys]
    stale = {keys[p][0] for p in todo}
    if any(unescape_cell(r["path"]) in stale for r in rows_done):  # the file changed since its row was written
        write_rows(csv_path, [r for r in rows_done if unescape_cell(r["path"]) not in stale])
    return keys, by_path, todo


@dataclass
class _Run:
    """What every batch of one locked run shares."""

    scorer: Scorer
    decision: Any
    out: Path
    maps: Maps
    keys: dict[Path, tuple[str, str, str]]
    summary: PredictSummary
    watch: Any
    err: Any


Decoded = tuple[np.ndarray, tuple[int, int]] | Exception


def _failed_rows(run: _Run, batch: list[tuple[Path, Decoded]], rows: list[list[Any]]) -> None:
    """The rows of the files of ``batch`` that could not be read, each reported on ``run.err``."""
    for i, (p, r) in enumerate(batch):
        if isinstance(r, Exception):
            msg = str(r).splitlines()[0] if str(r) else type(r).__name__
            run.summary.failed.append(str(p))
            print(f"error: {msg}" if str(p) in msg else f"error: cannot read {p}: {msg}", file=run.err)
            rows[i] = [*run.keys[p], "", "", "", "", "", "", "", "", msg]


def _scored_rows(run: _Run, ok: list[tuple[int, Path, tuple[np.ndarray, tuple[int, int]]]], rows: list[list[Any]]) -> None:
    """Score the decoded images ``ok`` (``(row index, path, (array, original size))``) as one batch,
    write the overlays asked for, and fill their rows."""
    from PIL import Image

    from fader_kit.deploy.detector import Detector
    from fader_kit.deploy.imagefiles import to_tensor
    from fader_kit.util.files import atomic_write

    watch, summary, size = run.watch, run.summary, run.scorer.image_size
    scale = max(1, 256 // size)
    with watch("to_tensor"):
        x = to_tensor([r[0] for _, _, r in ok])
    maps_b, scores = run.scorer.score_batch(x, watch)
    with watch("decide"):
        preds = Detector.judge(maps_b, scores, run.decision, [str(p) for _, p, _ in ok])
    with watch("write"):
        for (i, p, (arr, (w, h))), pred in zip(ok, preds):
            mx, my = pred.max_location
            name = ""
            if run.maps == "all" or (run.maps == "flagged" and pred.anomalous):
                heat = run.decision.calibration.normalise_map(pred.anomaly_map).numpy()
                img = Image.fromarray(overlay(arr, heat, pred.mask.numpy(), scale=scale))
                name = f"{MAPS_DIR}/{overlay_name(Path(run.keys[p][0]))}"
                atomic_write(run.out / name, lambda tmp, img=img: img.save(tmp, format="PNG", compress_level=1))
                summary.overlays += 1
            rows[i] = [*run.keys[p], f"{pred.score:.8g}", f"{pred.normalised_score:.6f}",
                       "anomalous" if pred.anomalous else "normal",
                       int((mx + 0.5) * w / size), int((my + 0.5) * h / size), w, h, name, ""]
            summary.predicted += 1
            summary.flagged += int(pred.anomalous)


def _append_rows(writer: Any, fh: Any, rows: list[list[Any]]) -> None:
    """Append ``rows`` (their text cells escaped) to the open CSV and sync them to disk."""
    import os

    for row in rows:
        for c in (COLUMNS.index(k) for k in TEXT_COLUMNS):
            row[c] = escape_cell(str(row[c]))
    writer.writerows(rows)
    fh.flush()
    os.fsync(fh.fileno())


def _predict_locked(scorer: Scorer, decision: Any, paths: Sequence[Path], out: Path, *, maps: Maps, batch_size: int,
                    workers: int, progress: bool, err: Any) -> PredictSummary:
    import time

    from fader_kit.util.timing import Stopwatch

    csv_path = out / CSV_NAME
    keys, by_path, todo = _todo(paths, csv_path)
    summary = PredictSummary(total=len(by_path), skipped=len(by_path) - len(todo), engine=getattr(scorer, "engine", "torch"),
                             threads=getattr(scorer, "threads", 0) or torch.get_num_threads())
    watch = Stopwatch()
    run = _Run(scorer, decision, out, maps, keys, summary, watch, err)
    t0, c0 = time.perf_counter(), time.process_time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="predict", file=err)
    with open(csv_path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        batches = decoded_batches(todo, scorer.image_size, batch_size, workers)
        while True:
            with watch("decode"):
                batch = next(batches, None)
            if batch is None:
                break
            ok = [(i, p, r) for i, (p, r) in enumerate(batch) if not isinstance(r, Exception)]
            rows: list[list[Any]] = [[] for _ in batch]  # in input order
            _failed_rows(run, batch, rows)
            if ok:
                _scored_rows(run, ok, rows)
            with watch("write"):
                _append_rows(writer, fh, rows)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    summary.wall = time.perf_counter() - t0
    summary.cpu = time.process_time() - c0
    summary.seconds = dict(watch.seconds)
    return summary


def timing_report(summary: PredictSummary) -> str:
    """Images/s, wall and CPU time, threads, and each step's share of the wall time."""
    n = summary.predicted + len(summary.failed)
    steps = summary.seconds
    total = sum(steps.values()) or 1.0
    parts = ", ".join(f"{k} {v:.2f}s ({100 * v / summary.wall:.0f}%)" for k, v in steps.items())
    rate = n / summary.wall if summary.wall > 0 else float("nan")
    return (f"timings: {n} images in {summary.wall:.2f}s wall ({rate:.1f} images/s), {summary.cpu:.2f}s CPU, "
            f"{summary.threads} {summary.engine} thread(s); steps: {parts}; other {max(summary.wall - total, 0):.2f}s")
