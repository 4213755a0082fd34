"""``fader-kit predict``: stream image files through a detector into ``predictions.csv`` and overlays.

Memory does not grow with the number of images: files are decoded in batches (the next batch on
worker threads while the current one is scored), each batch's rows are appended to the CSV and
flushed, and only flagged images (``maps="all"``: every image) get an overlay PNG.  A file that
cannot be read gets a row with its error and a line on stderr; the others go on.

A rerun into the same folder resumes: paths already in the CSV with a result are skipped, rows
that recorded an error are dropped and those files retried.  ``predict.json`` remembers which
model and threshold the CSV was made with, so a rerun with another one is refused instead of
mixing two models' rows in one file.
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
MAPS_DIR = "maps"
COLUMNS = ("path", "score", "normalised_score", "decision", "max_x", "max_y", "width", "height", "overlay", "error")
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

    @property
    def exit_status(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


# -- resuming ---------------------------------------------------------------------------------------
def read_done(csv_path: Path) -> set[str]:
    """Paths already predicted in ``csv_path``; rows with an error are removed (to be retried)."""
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(COLUMNS) - set(rows[0]):
        raise ConfigError(f"{csv_path} is not a fader-kit predictions file (columns differ): choose another --out")
    good = [r for r in rows if not r.get("error")]
    if len(good) != len(rows):
        from .util.files import atomic_write

        def rewrite(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
                writer.writeheader()
                writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in good)

        atomic_write(csv_path, rewrite)
    return {r["path"] for r in good}


def check_run(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse to append to a CSV made with another model or threshold (unless ``overwrite``)."""
    from .util.files import write_json_atomic

    run, csv_path = out / RUN_NAME, out / CSV_NAME
    if overwrite:
        csv_path.unlink(missing_ok=True)
        for png in (out / MAPS_DIR).glob("*.png") if (out / MAPS_DIR).is_dir() else []:
            png.unlink()
    elif csv_path.is_file() and run.is_file():
        before = json.loads(run.read_text())
        differ = sorted(k for k in identity if before.get(k) != identity[k])
        if differ:
            raise ConfigError(f"{csv_path} holds predictions made with another {' and '.join(differ)}: pass another "
                              "--out, or --overwrite to start it again")
    write_json_atomic(run, identity)


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
    :class:`fader_kit.detector.Decision`, ``identity`` what ties the CSV to this model and threshold."""
    import os
    import time

    from PIL import Image

    from .detector import Detector
    from .imagefiles import to_tensor
    from .util.timing import Stopwatch

    err = err or sys.stderr
    if batch_size < 1:
        raise ConfigError(f"argument --batch-size {batch_size}: expected at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_run(out, identity, overwrite)
    csv_path = out / CSV_NAME
    done = read_done(csv_path)
    todo = [p for p in paths if str(p) not in done]
    summary = PredictSummary(total=len(paths), skipped=len(paths) - len(todo))
    watch = Stopwatch()
    size = scorer.image_size
    scale = max(1, 256 // size)
    calibration = decision.calibration
    t0, c0 = time.perf_counter(), time.process_time()
    new_file = not csv_path.is_file()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="predict", file=err)
    with open(csv_path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)
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
                    rows[i] = [str(p), "", "", "", "", "", "", "", "", msg]
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
                            img = overlay(arr, heat, pred.mask.numpy(), scale=scale)
                            (out / MAPS_DIR).mkdir(exist_ok=True)
                            name = f"{MAPS_DIR}/{overlay_name(p)}"
                            Image.fromarray(img).save(out / name, compress_level=1)
                            summary.overlays += 1
                        rows[i] = [str(p), f"{pred.score:.8g}", f"{pred.normalised_score:.6f}",
                                   "anomalous" if pred.anomalous else "normal",
                                   int((mx + 0.5) * w / size), int((my + 0.5) * h / size), w, h, name, ""]
                        summary.predicted += 1
                        summary.flagged += int(pred.anomalous)
            with watch("write"):
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
            f"{torch.get_num_threads()} torch threads; steps: {parts}; other {max(summary.wall - total, 0):.2f}s")
