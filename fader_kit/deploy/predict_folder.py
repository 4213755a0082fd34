"""The output folder of ``fader-kit predict``: ``predictions.csv``, ``predict.json`` and the lock that
let a killed run resume (see :mod:`fader_kit.deploy.predict` for the rules), and the escaping of text
cells a spreadsheet would run as a formula.
"""
from __future__ import annotations

import csv
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

from fader_kit.errors import ConfigError
from fader_kit.util.files import file_lock

CSV_NAME = "predictions.csv"
RUN_NAME = "predict.json"
LOCK_NAME = "predict.lock"
MAPS_DIR = "maps"
COLUMNS = ("path", "file_size", "file_mtime_ns", "score", "normalised_score", "decision", "max_x", "max_y", "width",
           "height", "overlay", "error")
TEXT_COLUMNS = ("path", "overlay", "error")  # escaped against formula injection (numbers are written by us)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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
        self._held: Any = None  # the ExitStack holding the lock

    def __enter__(self) -> "RunLock":
        stack = ExitStack()
        try:
            fd = stack.enter_context(file_lock(self.path, wait=False))
        except BlockingIOError:
            raise ConfigError(f"another fader-kit predict is writing into {self.path.parent} (it holds the lock "
                              f"{self.path}): wait for it to end, or pass another --out") from None
        except OSError as exc:
            raise ConfigError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held = stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.close()  # closing releases the lock; the file stays (removing it would race a new run)
            self._held = None


def detector_identity(folder: Path, files: Sequence[str]) -> dict[str, str]:
    """``{file: SHA-256}`` of every file of a detector folder that exists."""
    from fader_kit.deploy.detector import sha256_of

    return {name: sha256_of(folder / name) for name in files if (folder / name).is_file()}


def run_identity(model: dict[str, str], decision: Any, maps: str) -> dict[str, Any]:
    """What ties a predictions folder to one model and one way of deciding (``predict.json``)."""
    return {"model": model, "image_threshold": float(decision.image_threshold),
            "pixel_threshold": float(decision.pixel_threshold), "threshold": decision.label, "maps": maps}


def check_run(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse to append to a CSV made with another model, threshold or ``--maps`` (unless ``overwrite``);
    record ``identity`` before the CSV exists, so a CSV is never without its ``predict.json``."""
    from fader_kit.util.files import write_json_atomic

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
    from fader_kit.util.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows([r.get(k, "") for k in COLUMNS] for r in rows)

    atomic_write(csv_path, write)
