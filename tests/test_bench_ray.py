"""The Ray executor: the same rows as the serial runner, a killed worker's task retried and its row
written once, an interrupted run resumed without recomputing, and one clear line without Ray.

One local Ray session (2 CPUs) serves the module.  The cheap test maskers of
``test_bench_runner`` are registered in-process, as a notebook would: their module is not
installed, so it is shipped to the workers by value (``ray.cloudpickle.register_pickle_by_value``),
exactly as classes defined in ``__main__`` travel.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import test_bench_runner as bench_cases
from fader_kit.engine.ray import RayNotInstalledError, RayOptions, import_ray, task_device
from fader_kit.engine.store import ResultRow, ResultStore
from fader_kit_bench.runner import run_table, run_table_ray

CATEGORIES = ("washer", "plate")
VOLATILE = {"timings", "finished_at"}  # wall-clock measurements: the only fields allowed to differ
# ... and, in ``config``, where the shared work was counted (the first row to finish) and the frames of a
# failure's traceback (a Ray task's stack is not the serial loop's)
VOLATILE_CONFIG = ("trained", "traceback")


def grid(out: Path, **kw):
    """2 categories x 2 variants, plus a masker whose weights are missing (its units must fail)."""
    return bench_cases.config(out, categories=CATEGORIES, maskers=("diff_a", "broken"), variants=("ear", "ours"), **kw)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle  # Ray's own copy serialises the tasks' arguments

    cloudpickle.register_pickle_by_value(bench_cases)  # the in-process plugin travels with the tasks
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(bench_cases)


@pytest.fixture(scope="module")
def serial_rows(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("serial")
    s = run_table(grid(out), registry=bench_cases.registry(), log=_quiet)
    assert (s.computed, s.failed) == (4, 4)
    return comparable(ResultStore(out).rows())


def comparable(rows: list[ResultRow]) -> dict:
    out = {}
    for r in rows:
        d = r.model_dump(exclude=VOLATILE)
        d["config"] = {k: v for k, v in d["config"].items() if k not in VOLATILE_CONFIG}
        out[(r.unit.masker, r.unit.variant, r.unit.category)] = d
    return out


def test_ray_rows_equal_serial_rows(ray_session, serial_rows, tmp_path):
    lines: list[str] = []
    s = run_table_ray(grid(tmp_path), RayOptions(), registry=bench_cases.registry(), log=lines.append)
    rows = ResultStore(tmp_path).rows()
    assert (s.planned, s.computed, s.failed, s.skipped) == (8, 4, 4, 0)
    assert comparable(rows) == serial_rows  # same numbers, seeds, keys, masker info, failure reasons
    broken = [r for r in rows if r.unit.masker == "broken"]
    assert {r.reason for r in broken} == {"MissingWeightsError: no weights for broken_vit: put broken_vit.safetensors "
                                          "in FADER_KIT_WEIGHTS"}
    # shared work ran once per key, in its own task: one U-Net per category, one fit per (category, masker)
    assert (s.ear_trained, s.maskers_fitted) == (2, 2)
    assert len(list((tmp_path / "cache" / "ear").glob("ear-*.pt"))) == 2
    ok = [r for r in rows if r.status == "ok"]
    assert sum(r.timings["ear_train"] > 0 for r in ok) == 2 and sum(r.timings["masker"] > 0 for r in ok) == 2
    assert any("EAR U-Net (washer, seed 0): trained" in line for line in lines)


def test_coverage_runs_on_ray_with_the_serial_rows(ray_session, tmp_path):
    """The coverage study's oracle masks are a mask source of the engine: the same rows on either executor."""
    cfg = dict(table="coverage", categories=("washer",), maskers=("gt@50", "diff_a"), variants=("ear", "fader"))
    s = run_table(bench_cases.config(tmp_path / "serial", **cfg), registry=bench_cases.registry(), log=_quiet)
    r = run_table_ray(bench_cases.config(tmp_path / "ray", **cfg), RayOptions(), registry=bench_cases.registry(),
                      log=_quiet)
    assert (s.computed, s.failed) == (r.computed, r.failed) == (4, 0)
    serial, ray = (comparable(ResultStore(tmp_path / d).rows()) for d in ("serial", "ray"))
    assert ray == serial
    assert serial[("gt@50", "ear", "washer")]["weights"] == "ground-truth"


def _descendants_named(root: int, prefix: str) -> list[int]:
    """Processes under ``root`` (this test's own Ray workers) whose title starts with ``prefix``."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                titles[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue

    def under(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return [pid for pid, title in titles.items() if title.startswith(prefix) and under(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
@pytest.mark.parametrize("retries", [2, 0])
def test_killed_worker_is_retried_and_its_row_written_once(ray_session, serial_rows, tmp_path, retries):
    killed: list[int] = []

    def kill_first_unit_worker() -> None:  # SIGKILL, as the OOM killer or a lost node would
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for pid in _descendants_named(os.getpid(), "ray::unit_task"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_unit_worker, daemon=True)
    killer.start()
    cfg = bench_cases.config(tmp_path, categories=CATEGORIES[:1], variants=("ear", "ours"))
    s = run_table_ray(cfg, RayOptions(max_retries=retries), registry=bench_cases.registry(), log=_quiet)
    killer.join(timeout=5)
    assert len(killed) == 1
    rows = ResultStore(tmp_path).rows()
    assert len(rows) == 2 and len({r.unit for r in rows}) == 2
    want = {k: v for k, v in serial_rows.items() if k[0] == "diff_a" and k[2] == CATEGORIES[0]}
    if retries:
        assert {r.status for r in rows} == {"ok"} and (s.computed, s.failed) == (2, 0)
        assert comparable(rows) == want  # the rerun of the killed task gives the same numbers
        return
    # no retries left: the killed unit is a failed row with Ray's reason, the other one finished
    (lost,) = [r for r in rows if r.status == "failed"]
    assert (s.computed, s.failed) == (1, 1) and lost.reason.startswith("WorkerCrashedError: ")
    s = run_table_ray(cfg, RayOptions(), registry=bench_cases.registry(), log=_quiet)  # a rerun fills it in
    assert (s.skipped, s.computed) == (1, 1) and comparable(ResultStore(tmp_path).rows()) == want


def test_interrupted_ray_run_resumes_without_recomputing(ray_session, tmp_path):
    cfg = bench_cases.config(tmp_path, categories=CATEGORIES[:1], variants=("ear", "ours", "hard"))
    written = []

    def ctrl_c_after_first_row(line: str) -> None:  # the user presses Ctrl-C once a row is in
        if line.startswith("[1/"):
            written.append(line)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_table_ray(cfg, RayOptions(), registry=bench_cases.registry(), log=ctrl_c_after_first_row)
    first = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert len(written) == 1 and len(first) == 1 and next(iter(first.values())).status == "ok"

    s = run_table_ray(cfg, RayOptions(), registry=bench_cases.registry(), log=_quiet)
    assert (s.planned, s.skipped, s.computed, s.failed) == (3, 1, 2, 0)
    assert (s.ear_trained, s.maskers_fitted) == (0, 0)  # the U-Net and the masks came from the cache
    after = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert set(after) == {"ear", "ours", "hard"}
    for v, r in first.items():  # the finished row is untouched
        assert after[v].finished_at == r.finished_at and after[v].image_auroc == r.image_auroc


def test_without_ray_the_executor_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    with pytest.raises(RayNotInstalledError, match=r"Ray is not installed; install the extra: pip install 'fader-kit\[ray\]'"):
        import_ray()
    from fader_kit.cli.main import main

    code = main(["bench", "table3", "--executor", "ray", "--out", str(tmp_path), "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("error: argument --executor ray: Ray is not installed; install the extra: "
                                     "pip install 'fader-kit[ray]'")
    assert not (tmp_path / "results.sqlite").exists()


def test_task_device_follows_the_gpus_each_task_reserves():
    assert task_device("cpu", RayOptions()) == "cpu"
    assert task_device("auto", RayOptions()) == "cpu" and task_device("auto", RayOptions(gpus_per_unit=0.5)) == "cuda"
    assert task_device("cuda", RayOptions(gpus_per_unit=1)) == "cuda"
    with pytest.raises(ValueError, match="needs --gpus-per-unit > 0"):
        task_device("cuda", RayOptions())
    with pytest.raises(ValueError, match="use --device cuda"):
        task_device("cuda:1", RayOptions(gpus_per_unit=1))
    with pytest.raises(ValueError, match="add --device cuda"):
        task_device("cpu", RayOptions(gpus_per_unit=1))


def test_cli_passes_the_ray_options_and_refuses_them_without_ray(monkeypatch, tmp_path, capsys):
    import fader_kit_bench.runner as ray_executor
    from fader_kit.cli.main import main
    from fader_kit.engine.runner import RunSummary

    seen = {}

    def fake_run(cfg, options):
        seen.update(cfg=cfg, options=options)
        return RunSummary()

    monkeypatch.setattr(ray_executor, "run_table_ray", fake_run)
    code = main(["bench", "table3", "--executor", "ray", "--address", "auto", "--cpus-per-unit", "4",
                 "--gpus-per-unit", "0.5", "--device", "cuda", "--max-retries", "1", "--seeds", "0,1",
                 "--out", str(tmp_path), "--no-report"])
    assert code == 0 and seen["options"] == RayOptions(address="auto", cpus_per_unit=4, gpus_per_unit=0.5,
                                                       max_retries=1)
    assert seen["cfg"].device == "cuda" and seen["cfg"].seeds == (0, 1)
    code = main(["bench", "table3", "--gpus-per-unit", "1", "--out", str(tmp_path), "--no-report"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: arguments --address, --gpus-per-unit and --cpus-per-unit need --executor ray")
