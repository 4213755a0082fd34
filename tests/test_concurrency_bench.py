"""The concurrency benchmark's summary (fader_kit_bench.concurrency): ratios to one job alone,
computed from hand-made measurements."""
from __future__ import annotations

from fader_kit_bench.concurrency import Job, Measurement, job_environment, summarise


def measurement(n: int, wall: float, cpu: float, load: float = 0.5) -> Measurement:
    return Measurement(n, load, tuple(Job(wall, cpu, 0) for _ in range(n)))


def test_summary_gives_each_count_its_mean_and_ratio_to_one_alone() -> None:
    lines = summarise([measurement(1, 10.0, 9.0), measurement(3, 33.0, 9.5), measurement(1, 12.0, 9.0, load=1.25),
                       measurement(3, 35.0, 9.5)])
    assert lines[1].split() == ["1", "11.0", "9.0", "1.00", "0.50,", "1.25"]
    assert lines[2].split()[:4] == ["3", "34.0", "9.5", "3.09"]  # 34 / 11


def test_jobs_start_without_the_users_openmp_settings(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    env = job_environment(None, {"KMP_BLOCKTIME": "0"})
    assert "OMP_WAIT_POLICY" not in env and "OMP_NUM_THREADS" not in env and env["KMP_BLOCKTIME"] == "0"
