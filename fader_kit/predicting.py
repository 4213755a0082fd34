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
import hashlib
import json
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

CSV_NAME = "predictions.csv"
RUN_NAME = "predict.json"
LOCK_NAME = "predict.lock"
MAPS_DIR = "maps"
COLUMNS = ("path", "file_size", "file_mtime_ns", "score", "normalised_score", "decision", "max_x", "max_y", "width",
           "height", "overlay", "error")
TEXT_COLUMNS = ("path", "overlay", "error")  # escaped against formula injection (numbers are written by us)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
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


# -- cells ------------------------------------------------------------------------------------------
def escape_cell(text: str) -> str:
    """``text`` with a leading apostrophe where a spreadsheet would evaluate it (``=cmd|...``)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


# -- the output folder ------------------------------------------------------------------------------
class RunLock:
    """An exclusive OS lock on ``folder/predict.lock`` for the lifetime of a run (released by the OS
    when the process ends, however it ends, so a killed run never leaves the folder locked)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import os

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): one run per folder is then up to the user
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"another fader-kit predict is writing into {self.path.parent} (it holds the lock "
                              f"{self.path}): wait for it to end, or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays (removing it would race a new run)
            self._fd = None


def detector_identity(folder: Path, files: Sequence[str]) -> dict[str, str]:
    """``{file: SHA-256}`` of every file of a detector folder that exists."""
    from .detector import sha256_of

    return {name: sha256_of(folder / name) for name in files if (folder / name).is_file()}


def run_identity(model: dict[str, str], decision: Any, maps: str) -> dict[str, Any]:
    """What ties a predictions folder to one model and one way of deciding (``predict.json``)."""
    return {"model": model, "image_threshold": float(decision.image_threshold),
            "pixel_threshold": float(decision.pixel_threshold), "threshold": decision.label, "maps": maps}


def check_run(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse to append to a CSV made with another model, threshold or ``--maps`` (unless ``overwrite``);
    record ``identity`` before the CSV exists, so a CSV is never without its ``predict.json``."""
    from .util.files import write_json_atomic

    run, csv_path = out / RUN_NAME, out / CSV_NAME
    if overwrite:
        csv_path.unlink(missing_ok=True)
        for png in (out / MAPS_DIR).glob("*.png") if (out / MAPS_DIR).is_dir() else []:
            png.unlink()
    elif csv_path.is_file():
        try:
            before = json.loads(run.read_text()) if run.is_file() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            before = None
        if not isinstance(before, dict):
            raise ConfigError(f"{csv_path} has no readable {run.name} saying which detector made it: pass another "
                              "--out, or --overwrite to start it again")
        differ = sorted(k for k in identity if before.get(k) != identity[k])
        if differ:
            raise ConfigError(f"{csv_path} holds predictions made with another {' and '.join(differ)}: pass another "
                              "--out, or --overwrite to start it again")
    write_json_atomic(run, identity)


def file_key(path: Path) -> tuple[str, str, str]:
    """``(resolved path, size, mtime in ns)`` as the CSV stores them: what a row is the result of."""
    st = path.stat()
    return str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)


def open_csv(csv_path: Path) -> list[dict[str, str]]:
    """The complete result rows of ``csv_path``, after repairing it: a missing or empty file gets its
    header (synced to disk), a torn last line is cut off, and rows with an error are dropped (their
    files are retried); the file is rewritten atomically when anything was dropped."""
    import io

    raw = csv_path.read_bytes() if csv_path.is_file() else b""
    text = raw.decode("utf-8", errors="replace")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a kill mid-line: cut it
    records: list[list[str]] = []
    try:
        for record in csv.reader(io.StringIO(complete, newline="")):
            records.append(record)
    except csv.Error:  # a quoted cell cut by the kill: keep what came before it
        pass
    if records and tuple(records[0]) != COLUMNS:
        raise ConfigError(f"{csv_path} is not a predictions file of this fader-kit (columns differ): pass another "
                          "--out, or --overwrite to start it again")
    rows = [dict(zip(COLUMNS, r)) for r in records[1:] if len(r) == len(COLUMNS)]
    good = [r for r in rows if not r["error"] and r["decision"] in ("anomalous", "normal")]
    if not records or len(good) != len(records) - 1 or complete != text:
        write_rows(csv_path, good)
    return good


def write_rows(csv_path: Path, rows: Sequence[dict[str, str]]) -> None:
    """Replace ``csv_path`` by the header and ``rows`` (already escaped cells), atomically."""
    from .util.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows([r.get(k, "") for k in COLUMNS] for r in rows)

    atomic_write(csv_path, write)


# -- decoding ---------------------------------------------------------------------------------------
def _decode(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]] | Exception:
    from .imagefiles import load_array

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


# -- overlays ---------------------------------------------------------------------------------------
_LUT: np.ndarray | None = None


def heat_lut() -> np.ndarray:
    """``[256, 3]`` uint8 colours of matplotlib's ``jet`` map (looked up once)."""
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _LUT


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray, alpha: float = 0.45, scale: int = 1) -> np.ndarray:
    """``image`` [S, S, 3] uint8 with ``heat`` (normalised map in [0, 1], 0.5 = pixel threshold)
    blended over it and the border of ``mask`` drawn in white; upscaled ``scale`` times."""
    colours = heat_lut()[np.clip((heat * 255).round(), 0, 255).astype(np.uint8)]
    out = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
        mask = mask.repeat(scale, 0).repeat(scale, 1)
    if mask.any():
        padded = np.pad(mask, 1, constant_values=False)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        out[mask & ~inner] = 255
    return out


def overlay_name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{path.parent.name}_{path.stem}")[:80]
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}.png"


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
    :class:`fader_kit.detector.Decision`, ``identity`` what ties the CSV to this model and decision
    (:func:`run_identity`)."""
    from .util.files import remove_stale_temps, writable_folder

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


def _predict_locked(scorer: Scorer, decision: Any, paths: Sequence[Path], out: Path, *, maps: Maps, batch_size: int,
                    workers: int, progress: bool, err: Any) -> PredictSummary:
    import os
    import time

    from PIL import Image

    from .detector import Detector
    from .imagefiles import to_tensor
    from .util.files import atomic_write
    from .util.timing import Stopwatch

    csv_path = out / CSV_NAME
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
    summary = PredictSummary(total=len(by_path), skipped=len(by_path) - len(todo), engine=getattr(scorer, "engine", "torch"),
                             threads=getattr(scorer, "threads", 0) or torch.get_num_threads())
    watch = Stopwatch()
    size = scorer.image_size
    scale = max(1, 256 // size)
    calibration = decision.calibration
    t0, c0 = time.perf_counter(), time.process_time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="predict", file=err)
    with open(csv_path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        batches = decoded_batches(todo, size, batch_size, workers)
        while True:
            with watch("decode"):
                batch = next(batches, None)
            if batch is None:
                break
            ok = [(i, p, r) for i, (p, r) in enumerate(batch) if not isinstance(r, Exception)]
            rows: list[list[Any]] = [[] for _ in batch]  # in input order
            for i, (p, r) in enumerate(batch):
                if isinstance(r, Exception):
                    msg = str(r).splitlines()[0] if str(r) else type(r).__name__
                    summary.failed.append(str(p))
                    print(f"error: {msg}" if str(p) in msg else f"error: cannot read {p}: {msg}", file=err)
                    rows[i] = [*keys[p], "", "", "", "", "", "", "", "", msg]
            if ok:
                with watch("to_tensor"):
                    x = to_tensor([r[0] for _, _, r in ok])
                maps_b, scores = scorer.score_batch(x, watch)
                with watch("decide"):
                    preds = Detector.judge(maps_b, scores, decision, [str(p) for _, p, _ in ok])
                with watch("write"):
                    for (i, p, (arr, (w, h))), pred in zip(ok, preds):
                        mx, my = pred.max_location
                        name = ""
                        if maps == "all" or (maps == "flagged" and pred.anomalous):
                            heat = calibration.normalise_map(pred.anomaly_map).numpy()
                            img = Image.fromarray(overlay(arr, heat, pred.mask.numpy(), scale=scale))
                            name = f"{MAPS_DIR}/{overlay_name(Path(keys[p][0]))}"
                            atomic_write(out / name, lambda tmp, img=img: img.save(tmp, format="PNG", compress_level=1))
                            summary.overlays += 1
                        rows[i] = [*keys[p], f"{pred.score:.8g}", f"{pred.normalised_score:.6f}",
                                   "anomalous" if pred.anomalous else "normal",
                                   int((mx + 0.5) * w / size), int((my + 0.5) * h / size), w, h, name, ""]
                        summary.predicted += 1
                        summary.flagged += int(pred.anomalous)
            with watch("write"):
                for row in rows:
                    for c in (COLUMNS.index(k) for k in TEXT_COLUMNS):
                        row[c] = escape_cell(str(row[c]))
                writer.writerows(rows)
                fh.flush()
                os.fsync(fh.fileno())
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
