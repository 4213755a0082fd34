"""The estimate before a long job (fader_kit.engine.pace): its arithmetic, the slow-machine rule and its
reasons, with injected timings (nothing here asserts against the real clock)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from fader_kit.model.config import get_profile
from fader_kit.engine.runner import Grid, GridRunner, Head
from fader_kit.engine.sources import MaskerSource
from fader_kit.engine.pace import (
    REFERENCE, JobWork, MachineState, PaceReport, Reference, announce, busy_seconds, cpu_model, estimate_seconds, is_long,
    measure, others_cpus, reference_step, slow_reasons, time_ear_steps,
)

CPU = get_profile("cpu")
MAIN_JOB = JobWork(ear_trainings=1, fader_trainings=5, scored_models=6, n_train=60, n_test=200)
REF = Reference(cpu="AMD EPYC, AVX-512", threads=2, profile="cpu", step_seconds=0.1, job="the main job")


def test_estimate_counts_each_kind_of_work() -> None:
    # cpu profile: EAR 20 epochs at batch 4 + a BatchNorm pass (1/3 of a step); FADeR 10 epochs
    # images: (20 + 1/3) * 60 + 5 * 10 * 0.73 * 60 + 6 * 200 * 0.4 = 1220 + 2190 + 480 = 3890
    assert estimate_seconds(MAIN_JOB, CPU, 0.1) == pytest.approx(3890 * 0.1 / 4)
    no_bn = CPU.model_copy(update={"ear": CPU.ear.model_copy(update={"recalibrate_bn": False})})
    assert estimate_seconds(JobWork(ear_trainings=2, n_train=10), no_bn, 0.4) == pytest.approx(2 * 20 * 10 * 0.4 / 4)
    assert estimate_seconds(JobWork(n_train=60), CPU, 0.1) == 0.0  # everything cached: nothing to train


def test_reference_step_is_scaled_to_another_profile_by_its_convolutions() -> None:
    assert reference_step(CPU, REF) == 0.1
    bigger = CPU.model_copy(update={"image_size": 256})  # four times the pixels at every level
    assert reference_step(bigger, REF) == pytest.approx(0.4)
    twice_the_batch = CPU.model_copy(update={"ear": CPU.ear.model_copy(update={"batch_size": 8})})
    assert reference_step(twice_the_batch, REF) == pytest.approx(0.2)


def test_only_long_jobs_are_measured() -> None:
    assert is_long(MAIN_JOB, CPU)
    assert not is_long(JobWork(ear_trainings=1, fader_trainings=1, scored_models=2, n_train=60, n_test=200),
                       get_profile("smoke"))
    calls: list[str] = []

    def timer(profile, device):
        calls.append(device)
        return 0.1

    assert announce(JobWork(n_train=60), CPU, "cpu", log=calls.append, timer=timer) is None
    assert calls == []


def state(**kw) -> MachineState:
    base = dict(cpu="AMD EPYC, AVX-512", threads=2, usable_cpus=2, load=0.3, others_cpus=0.0)
    return MachineState(**{**base, **kw})


def report(step: float, **kw) -> PaceReport:
    return PaceReport(step_seconds=step, expected_seconds=estimate_seconds(MAIN_JOB, CPU, step), reference_step=0.1,
                      state=state(**kw))


def test_the_estimate_line_and_no_warning_near_the_reference() -> None:
    lines = report(0.19).lines(CPU, "cpu", REF)
    assert len(lines) == 1
    assert lines[0].startswith("pace: one EAR training step takes 0.190 s here (cpu profile, 128px, batch 4, cpu, "
                               "2 threads): expected ~3.1 min")  # 3890 * 0.19 / 4 = 185 s


def test_a_machine_twice_as_slow_is_told_why() -> None:
    lines = report(0.25, others_cpus=1.4, threads=1, cpu="AMD EPYC, AVX2").lines(CPU, "cpu", REF)
    assert len(lines) == 2
    warning = lines[1]
    assert warning.startswith("warning: this machine trains 2.5x slower than the reference (0.100 s per step of the "
                              "cpu profile on AMD EPYC, AVX-512, 2 threads; the main job)")
    assert "other processes kept 1.4 of 2 CPUs busy" in warning
    assert "1 torch thread (the reference: 2" in warning
    assert "another CPU (AMD EPYC, AVX2; the reference: AMD EPYC, AVX-512)" in warning  # same name, narrower vectors


def test_slow_with_no_visible_cause_says_so() -> None:
    assert report(0.3).lines(CPU, "cpu", REF)[1].endswith("no cause seen (same CPU, threads and no load)")


def test_no_comparison_on_a_gpu() -> None:  # the reference is a CPU's
    assert len(report(5.0).lines(CPU, "cuda", REF)) == 1


@pytest.mark.parametrize(("kw", "expected"), [
    (dict(others_cpus=0.2, load=3.5), ["load average 3.5 on 2 CPUs: other processes compete"]),
    (dict(others_cpus=None, load=0.5), []),
    (dict(others_cpus=0.6, load=0.5), ["other processes kept 0.6 of 2 CPUs busy while it was measured"]),
])
def test_load_reasons(kw: dict, expected: list[str]) -> None:
    assert slow_reasons(state(**kw), REF) == expected


def test_others_cpus_is_the_machine_busy_time_less_this_process() -> None:
    assert others_cpus((100.0, 104.0), (10.0, 11.5), 2.0) == pytest.approx(1.25)
    assert others_cpus((100.0, 101.0), (10.0, 11.5), 2.0) == 0.0  # rounding of the counters: never negative
    assert others_cpus((None, 104.0), (10.0, 11.5), 2.0) is None


def test_cpu_model_names_the_vector_unit(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n")
    assert cpu_model(info) == "AMD EPYC, AVX2"
    info.write_text("model name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: avx avx2 avx512f\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Gold 6338, AVX-512"


def test_busy_seconds_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 1000 10 1 2 3 0 0\ncpu0 50 2 25 500 5 0 1 1 0 0\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds(stat) == pytest.approx((100 + 5 + 50 + 1 + 2 + 3) / hz)  # idle and iowait left out
    assert busy_seconds(tmp_path / "missing") is None


def test_measure_uses_the_injected_timer_and_reads_the_machine() -> None:
    busy = iter([100.0, 100.5])
    r = measure(MAIN_JOB, CPU, "cpu", timer=lambda p, d: 0.2, busy=lambda: next(busy), reference=REF)
    assert r.step_seconds == 0.2 and r.slowdown == pytest.approx(2.0)
    assert r.expected_seconds == pytest.approx(3890 * 0.2 / 4)
    assert r.state.threads == torch.get_num_threads() and r.state.usable_cpus >= 1
    assert r.state.others_cpus is not None and r.state.others_cpus >= 0


def test_announce_logs_the_lines_of_a_long_job() -> None:
    logged: list[str] = []
    got = announce(MAIN_JOB, CPU, "cpu", log=logged.append, timer=lambda p, d: REFERENCE.step_seconds * 3)
    assert got is not None and logged[0].startswith("pace: ") and logged[1].startswith("warning: this machine trains "
                                                                                       "3.0x slower")


def test_timing_steps_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seconds = time_ear_steps(get_profile("smoke"), "cpu", budget=0.0)
    assert seconds > 0 and math.isfinite(seconds)
    assert torch.equal(torch.rand(3), expected)  # the job's own initialisation is what it would have been


def test_the_runner_counts_what_is_left_to_compute(tmp_path: Path) -> None:
    smoke = get_profile("smoke")
    grid = Grid(table="t", out=tmp_path, data="synthetic", categories=("washer",), profile=smoke,
                sources=(MaskerSource("patch_stats", {}),),
                heads=(Head(name="ear"), Head(name="paper", config=smoke.fader_head),
                       Head(name="alone", kind="masker")), seeds=(0, 1))
    runner = GridRunner(grid, log=lambda _: None)
    todo = runner.plan()
    work = runner.pace_work(todo, n_train=60, n_test=200)
    assert (work.ear_trainings, work.fader_trainings, work.scored_models) == (2, 2, 4)  # one U-Net per seed
    cached = runner.cache.ear_path(todo[0].keys.ear)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert runner.pace_work(todo, n_train=60, n_test=200).ear_trainings == 1
