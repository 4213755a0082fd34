"""The results folder: rows in SQLite, and beside them what the report needs to pair seeds.

A unit is (table, data, profile, masker, variant, category, seed).  Each row carries the
``work_key`` -- a digest of every setting its numbers depend on -- so a rerun skips a row only
when it finished *with the same settings*; a changed setting recomputes and replaces it.  SQLite
commits are atomic, so a run killed mid-way keeps every row that had finished.

Per-image score details (:class:`~fader_kit.engine.stats.ScoreDetail`: what the paired bootstrap needs)
are written to ``details/<key>.pt`` before their row, named by the row's work key (``<work
key>.fused`` for the fused score, ``<masks key>.alone`` for the masker alone).  A results folder
is therefore self-contained: the report needs nothing from the compute cache.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, Field

from fader_kit.errors import MissingFileError, UserError
from fader_kit.util.files import torch_save_atomic

if TYPE_CHECKING:
    from fader_kit.engine.stats import ScoreDetail

DB_NAME = "results.sqlite"
Status = Literal["ok", "failed"]

_COLUMNS = """
    table_name   TEXT NOT NULL,
    data         TEXT NOT NULL,
    profile      TEXT NOT NULL,
    masker       TEXT NOT NULL,
    variant      TEXT NOT NULL,
    category     TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT,
    work_key     TEXT NOT NULL,
    image_auroc  REAL,
    pixel_auroc  REAL,
    pixel_aupro  REAL,
    image_f1_max REAL,
    weights      TEXT,
    device       TEXT,
    timings      TEXT,
    environment  TEXT,
    config       TEXT,
    reused_from  TEXT,
    finished_at  TEXT,
    PRIMARY KEY (table_name, data, profile, masker, variant, category, seed)
"""


class UnitId(BaseModel):
    """The identity of one unit of work (one results row)."""

    model_config = {"frozen": True}

    table: str
    data: str
    profile: str
    masker: str
    variant: str
    category: str
    seed: int

    def label(self) -> str:
        return f"{self.table} {self.masker}/{self.variant} {self.category} (seed {self.seed})"


class ResultRow(BaseModel):
    """A results row as stored (``timings``, ``environment`` and ``config`` are JSON objects)."""

    unit: UnitId
    status: Status
    work_key: str
    reason: str | None = None
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    pixel_aupro: float | None = None
    image_f1_max: float | None = None
    weights: str | None = None
    device: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    reused_from: str | None = None
    finished_at: str | None = None


class ResultStore:
    """The SQLite file ``results.sqlite`` in a benchmark's output folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"results folder {self.folder} is a file; name a folder (new or existing) instead")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / DB_NAME
        self.details = DetailStore(self.folder)
        with closing(self._connect()) as con, con:
            con.execute(f"CREATE TABLE IF NOT EXISTS results ({_COLUMNS})")

    @classmethod
    def open_existing(cls, folder: str | Path) -> "ResultStore":
        """Open a folder's results for reading; a clear error when there are none."""
        path = Path(folder) / DB_NAME
        if not path.is_file():
            raise MissingFileError(f"no benchmark results in {folder}: {path} does not exist (run `fader-kit bench` first)")
        return cls(folder)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    # -- writing -------------------------------------------------------------------------------
    def put(self, row: ResultRow) -> None:
        """Insert or replace one row and commit at once."""
        u = row.unit
        values = {
            "table_name": u.table, "data": u.data, "profile": u.profile, "masker": u.masker, "variant": u.variant,
            "category": u.category, "seed": u.seed, "status": row.status, "reason": row.reason,
            "work_key": row.work_key, "image_auroc": row.image_auroc, "pixel_auroc": row.pixel_auroc,
            "pixel_aupro": row.pixel_aupro, "image_f1_max": row.image_f1_max, "weights": row.weights,
            "device": row.device, "timings": json.dumps(row.timings), "environment": json.dumps(row.environment),
            "config": json.dumps(row.config, default=str), "reused_from": row.reused_from,
            "finished_at": row.finished_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT OR REPLACE INTO results ({cols}) VALUES ({marks})", values)

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _row(r: sqlite3.Row) -> ResultRow:
        unit = UnitId(table=r["table_name"], data=r["data"], profile=r["profile"], masker=r["masker"],
                      variant=r["variant"], category=r["category"], seed=r["seed"])
        return ResultRow(
            unit=unit, status=r["status"], work_key=r["work_key"], reason=r["reason"],
            image_auroc=r["image_auroc"], pixel_auroc=r["pixel_auroc"], pixel_aupro=r["pixel_aupro"],
            image_f1_max=r["image_f1_max"], weights=r["weights"], device=r["device"],
            timings=json.loads(r["timings"] or "{}"), environment=json.loads(r["environment"] or "{}"),
            config=json.loads(r["config"] or "{}"), reused_from=r["reused_from"], finished_at=r["finished_at"],
        )

    def get(self, unit: UnitId) -> ResultRow | None:
        with closing(self._connect()) as con:
            r = con.execute(
                "SELECT * FROM results WHERE table_name=? AND data=? AND profile=? AND masker=? AND variant=? "
                "AND category=? AND seed=?",
                (unit.table, unit.data, unit.profile, unit.masker, unit.variant, unit.category, unit.seed),
            ).fetchone()
        return self._row(r) if r is not None else None

    def find_ok(self, work_key: str) -> ResultRow | None:
        """A finished row (of any table) computed with exactly these settings."""
        with closing(self._connect()) as con:
            r = con.execute(
                "SELECT * FROM results WHERE work_key=? AND status='ok' ORDER BY finished_at LIMIT 1", (work_key,)
            ).fetchone()
        return self._row(r) if r is not None else None

    def is_done(self, unit: UnitId, work_key: str) -> bool:
        row = self.get(unit)
        return row is not None and row.status == "ok" and row.work_key == work_key

    def rows(self) -> list[ResultRow]:
        with closing(self._connect()) as con:
            return [self._row(r) for r in con.execute(
                "SELECT * FROM results ORDER BY table_name, data, profile, masker, category, variant, seed"
            )]

    def __iter__(self) -> Iterator[ResultRow]:
        return iter(self.rows())


class DetailStore:
    """Per-image score details beside the rows (``details/<key>.pt``), read with ``weights_only``."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder) / "details"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def save(self, key: str, detail: "ScoreDetail") -> Path:
        return torch_save_atomic(detail.to_dict(), self.path(key))

    def load(self, key: str) -> "ScoreDetail | None":
        from fader_kit.engine.stats import ScoreDetail

        path = self.path(key)
        if not path.is_file():
            return None
        import torch

        return ScoreDetail.from_dict(torch.load(path, map_location="cpu", weights_only=True))
