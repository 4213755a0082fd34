"""``predict`` that survives kills: a lock, an identity covering every file of the detector, rows
keyed by resolved path + size + mtime, torn lines repaired, atomic files, escaped CSV cells, and
SIGKILL at random points (a fake scorer keeps it fast; the loop and the files are the real ones)."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fader_kit.deploy.thresholds import PixelQuantiles, calibration_from
from fader_kit.deploy.detector import make_decision
from fader_kit.errors import ConfigError
from fader_kit.deploy.predict import (COLUMNS, CSV_NAME, LOCK_NAME, RUN_NAME, RunLock, detector_identity, escape_cell,
                                  predict_files, run_identity, unescape_cell)
from fader_kit.util.files import write_text_atomic

CAL = calibration_from(list(np.linspace(0.2, 0.8, 20)), PixelQuantiles(rates=[0.5, 0.0], values=[0.3, 0.9]), 100, 0.1)
DECISION = make_decision(CAL)


class FakeScorer:
    """Maps = the image's mean brightness per pixel: fast, deterministic, and both outcomes occur."""

    image_size = 8

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def score_batch(self, images: torch.Tensor, watch: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        maps = images.mean(1, keepdim=True)
        return maps, maps.flatten(1).amax(1)


def images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(np.full((10, 12, 3), int(rng.integers(30, 230)), np.uint8)).save(path)
        out.append(path)
    return out


def identity(**change: object) -> dict:
    return {**run_identity({"model.safetensors": "a" * 64}, DECISION, "flagged"), **change}


def run(paths: list[Path], out: Path, scorer: FakeScorer | None = None, **kw: object):
    kw = {"identity": identity(), "batch_size": 3, "workers": 0, "progress": False, "err": open(os.devnull, "w"), **kw}
    return predict_files(scorer or FakeScorer(), DECISION, paths, out, **kw)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / CSV_NAME, newline="") as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == COLUMNS
        got = list(reader)
    assert all(len(r) == len(COLUMNS) for r in got)
    return [dict(zip(COLUMNS, r)) for r in got]


def test_torn_last_line_and_headerless_csv_are_repaired(tmp_path: Path) -> None:
    """Before: a torn last line counted as done and the next row was glued onto it; an empty CSV
    (killed before the header reached the disk) gave a headerless file."""
    paths = images(tmp_path / "in", 5)
    out = tmp_path / "out"
    run(paths, out)
    text = (out / CSV_NAME).read_text()
    (out / CSV_NAME).write_text(text[: len(text) - 9])  # the last row cut mid-line
    run(paths, out)
    got = rows(out)
    assert sorted(r["path"] for r in got) == sorted(str(p.resolve()) for p in paths)
    (out / CSV_NAME).write_text("")  # killed before the header was written
    run(paths, out)
    assert len(rows(out)) == 5


def test_rows_are_keyed_by_resolved_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = images(tmp_path / "in", 4)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    first = run([Path("in") / p.name for p in paths], out)  # relative paths
    again = run([p.resolve() for p in paths] + [Path("in/./img000.png")], out)  # absolute, and typed twice
    assert first.predicted == 4 and again.predicted == 0 and again.skipped == 4
    Image.fromarray(np.full((10, 13, 3), 250, np.uint8)).save(paths[1])  # replaced by another image
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    third = run(paths, out)
    got = rows(out)
    assert third.predicted == 1 and len(got) == 4
    replaced = [r for r in got if r["path"] == str(paths[1].resolve())]
    assert len(replaced) == 1 and replaced[0]["width"] == "13"


def test_identity_covers_every_detector_file_thresholds_and_maps(tmp_path: Path) -> None:
    """Before: only model.safetensors' digest and a threshold label: a refit with another calibration
    appended to the old CSV."""
    folder = tmp_path / "det"
    folder.mkdir()
    for name in ("detector.json", "calibration.json", "model.safetensors"):
        (folder / name).write_text(name)
    before = detector_identity(folder, ("detector.json", "calibration.json", "model.safetensors", "README.md"))
    assert set(before) == {"detector.json", "calibration.json", "model.safetensors"}
    (folder / "calibration.json").write_text("another calibration")
    after = detector_identity(folder, ("detector.json", "calibration.json", "model.safetensors"))
    assert after["calibration.json"] != before["calibration.json"]
    paths = images(tmp_path / "in", 3)
    out = tmp_path / "out"
    run(paths, out, identity=run_identity(before, DECISION, "flagged"))
    with pytest.raises(ConfigError, match="another model"):
        run(paths, out, identity=run_identity(after, DECISION, "flagged"))
    with pytest.raises(ConfigError, match="another maps"):
        run(paths, out, identity=run_identity(before, DECISION, "all"))
    raw = make_decision(CAL, CAL.image_threshold + 0.1)
    with pytest.raises(ConfigError, match="another image_threshold"):
        run(paths, out, identity=run_identity(before, raw, "flagged"))
    assert json.loads((out / RUN_NAME).read_text())["model"] == before
    (out / RUN_NAME).unlink()  # a CSV whose identity is gone is not appended to
    with pytest.raises(ConfigError, match="no readable predict.json"):
        run(paths, out, identity=run_identity(before, DECISION, "flagged"))


def test_a_second_run_into_the_same_folder_is_refused_by_its_lock(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    pytest.importorskip("fcntl")
    with RunLock(out):
        with pytest.raises(ConfigError, match=f"another fader-kit predict is writing into .*{LOCK_NAME}"):
            run(paths, out)
    assert run(paths, out).predicted == 2  # released


def test_out_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 1)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="--out .*taken is a file, not a folder"):
        run(paths, tmp_path / "taken")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run(paths, tmp_path / "taken" / "below")


def test_formula_cells_are_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fader_kit.deploy.predict as predicting

    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert escape_cell(text) == "'" + text and unescape_cell(escape_cell(text)) == text
    assert escape_cell("/parts/a.png") == "/parts/a.png" and unescape_cell("'plain") == "'plain"
    paths = images(tmp_path / "in", 2)
    real = predicting._decode
    monkeypatch.setattr(predicting, "_decode", lambda p, size: ValueError('=HYPERLINK("http://x")')
                        if p.name == "img001.png" else real(p, size))
    run(paths, tmp_path / "out")
    bad = [r for r in rows(tmp_path / "out") if r["error"]]
    assert bad[0]["error"] == '\'=HYPERLINK("http://x")'


def test_atomic_writes_use_fresh_names_and_never_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    target = tmp_path / "out.txt"
    target.symlink_to(victim)
    write_text_atomic(target, "new")
    assert victim.read_text() == "keep" and not target.is_symlink() and target.read_text() == "new"
    planted = tmp_path / f".out.txt.{os.getpid()}.tmp"  # the old predictable name
    planted.symlink_to(victim)
    write_text_atomic(target, "newer")
    assert victim.read_text() == "keep" and target.read_text() == "newer"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [planted.name]


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_predict_killed_at_random_points_leaves_every_image_exactly_once(tmp_path: Path) -> None:
    """SIGKILL a forked predict at random moments, many times, then let one run finish: the CSV parses,
    holds every image once with a result, and no temporary file or unreferenced state is left."""
    paths = images(tmp_path / "in", 40)
    out = tmp_path / "out"
    whole = float("inf")  # how long one whole run takes here (the faster of two: the first warms up)
    for i in range(2):
        t0 = time.perf_counter()
        run(paths, tmp_path / f"timing{i}", scorer=FakeScorer(delay=0.002), maps="all", identity=identity(maps="all"))
        whole = min(whole, time.perf_counter() - t0)
    rng = random.Random(0)
    progress: list[int] = []
    window = whole / 10  # the kills land all along the run; the window widens while a kill finds no new row
    for _ in range(25):
        pid = os.fork()
        if pid == 0:  # the child: predict until killed
            try:
                torch.set_num_threads(1)
                run(paths, out, scorer=FakeScorer(delay=0.002), maps="all", identity=identity(maps="all"))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, window))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        text = (out / CSV_NAME).read_text() if (out / CSV_NAME).is_file() else ""
        done = max(text.count("\n") - 1, 0)  # complete lines after the header (a torn one is left to the rerun)
        if done == (progress[-1] if progress else 0):
            window = min(window * 1.5, whole)
        progress.append(done)
        if done == 40:
            break
    assert len({n for n in progress if 0 < n < 40}) >= 2  # the kills landed at several points of the run
    summary = run(paths, out, maps="all", identity=identity(maps="all"))
    got = rows(out)
    assert sorted(r["path"] for r in got) == sorted(str(p.resolve()) for p in paths)
    assert summary.predicted + summary.skipped == 40
    assert all(r["decision"] in ("anomalous", "normal") and float(r["score"]) >= 0 for r in got)
    assert all((out / r["overlay"]).is_file() for r in got)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
