"""Know the machine before the long work: time a few EAR training steps, print the expected
duration, and say when (and why) this machine is far slower than the reference.

Why: the same command takes 2 minutes on one 2-core machine and 20 on another (an older CPU,
one thread, other programs on the machine), and the engine's ETA only comes after the first
unit, which may itself take many minutes.  A second or two of real training steps, with the
job's U-Net at the job's size on the job's device and thread count, tells the user at once.

The estimate counts the job's work in images through the U-Net, each kind weighted by what it
cost on the reference machine relative to an EAR training step (:data:`FADER_STEP_WEIGHT`,
:data:`SCORE_WEIGHT`): EAR training (epochs + one BatchNorm re-estimation pass, forward only),
FADeR training (the head and the decoder's fine-tune) and scoring the test images.  Fitting a
masker is not counted (``patch_stats`` takes a second; a trained masker more).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from fader_kit.model.config import PROFILES, Profile

#: A job estimated at fewer seconds than this on the reference machine is not measured: the
#: measurement would cost more than it tells (the smoke profile, the tests).
LONG_JOB_SECONDS = 60.0
#: The step time at this multiple of the reference (or more) earns the "slower machine" line.
SLOW_FACTOR = 2.0
#: Cost of one image through a FADeR training step, in EAR training steps per image: the main
#: job's five FADeR trainings (80 steps at batch 8: 11.2-16.1 s) against its EAR training (300
#: steps at batch 4: about 37 s), on the reference machine.
FADER_STEP_WEIGHT = 0.73
#: Cost of scoring one test image (anomaly map, MSGMS, metrics), in EAR training steps per image:
#: about 2.5 s per unit of the main job for its 200 test images.
SCORE_WEIGHT = 0.4
#: BatchNorm statistics are re-estimated after EAR training over one more epoch, forward only.
BN_EPOCH_WEIGHT = 1 / 3


class Reference(BaseModel):
    """One EAR training step as :func:`time_ear_steps` measured it on the reference machine."""

    model_config = ConfigDict(frozen=True)

    cpu: str = Field(description="the CPU it was measured on, as cpu_model() names it")
    threads: int
    profile: str = Field(description="the profile whose U-Net, image size and batch size were timed")
    step_seconds: float
    job: str = Field("", description="the job whose time the README gives, for the message")


#: Measured with ``python -m fader_kit_bench.pace`` (and by the main job at its start) on the machine
#: the README's times come from, with the OpenMP settings of fader_kit.util.threads; see
#: docs/results/concurrency.md.
REFERENCE = Reference(cpu="AMD EPYC, AVX-512", threads=2, profile="cpu",
                      step_seconds=0.083, job="the main job took 87 s there")


class JobWork(BaseModel):
    """What a job still has to compute, as the estimate counts it."""

    model_config = ConfigDict(frozen=True)

    ear_trainings: int = Field(0, ge=0, description="EAR U-Nets to train")
    fader_trainings: int = Field(0, ge=0, description="FADeR heads to train")
    scored_models: int = Field(0, ge=0, description="models scored on the test images")
    n_train: int = Field(ge=0, description="training images per U-Net")
    n_test: int = Field(0, ge=0, description="test images each model is scored on")


def step_images(work: JobWork, profile: Profile) -> float:
    """The job's work in images through an EAR training step (the unit :func:`estimate_seconds`
    multiplies by the seconds per image)."""
    ear = work.ear_trainings * (profile.ear.epochs + (BN_EPOCH_WEIGHT if profile.ear.recalibrate_bn else 0))
    fader = work.fader_trainings * profile.fader.epochs * FADER_STEP_WEIGHT
    return (ear + fader) * work.n_train + work.scored_models * work.n_test * SCORE_WEIGHT


def estimate_seconds(work: JobWork, profile: Profile, step_seconds: float) -> float:
    """Expected seconds of ``work`` where one EAR training step of ``profile`` takes ``step_seconds``."""
    return step_images(work, profile) * step_seconds / profile.ear.batch_size


def unet_cost(profile: Profile) -> float:
    """A training step's convolution cost, up to a constant: per image, each level's width squared
    times its pixels (the U-Net halves the side at each level), times the batch."""
    s = profile.image_size
    return profile.ear.batch_size * sum(w * w * (s / 2 ** i) ** 2 for i, w in enumerate(profile.unet.widths))


def reference_step(profile: Profile, reference: Reference = REFERENCE) -> float:
    """The reference machine's step time for ``profile``: measured for the reference's profile,
    scaled by :func:`unet_cost` for any other (a rough figure: small convolutions run less
    efficiently than large ones)."""
    ref_profile = PROFILES[reference.profile]
    if profile == ref_profile:
        return reference.step_seconds
    return reference.step_seconds * unet_cost(profile) / unet_cost(ref_profile)


def is_long(work: JobWork, profile: Profile, reference: Reference = REFERENCE) -> bool:
    """Whether the job takes at least :data:`LONG_JOB_SECONDS` on the reference machine."""
    return estimate_seconds(work, profile, reference_step(profile, reference)) >= LONG_JOB_SECONDS


def time_ear_steps(profile: Profile, device: str | torch.device = "cpu", *, budget: float = 1.5, max_steps: int = 4,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per EAR training step of ``profile`` (its U-Net, image size, batch size, loss and
    optimiser: :func:`~fader_kit.model.training.train_reconstructor` itself) on ``device`` with torch's
    current thread count.  Two warm-up steps (memory, kernel selection) are not counted; then one
    step, and where it is short, as many as fit in ``budget`` seconds (up to ``max_steps``).  The
    images are random and torch's global random state is left as it was, so the job trains exactly
    as without this."""
    from fader_kit.model.training import train_reconstructor
    from fader_kit.model.unet import EARUNet

    bs = profile.ear.batch_size
    config = profile.ear.model_copy(update={"epochs": 1, "recalibrate_bn": False, "schedule": "fixed"})
    gen = torch.Generator().manual_seed(0)

    def steps(n: int) -> float:
        images = torch.rand(n * bs, 3, profile.image_size, profile.image_size, generator=gen)
        with torch.random.fork_rng(devices=[]):
            model = EARUNet(profile.unet)
            t = clock()
            train_reconstructor(model, images, None, config, patch_size=profile.fader_head.patch_size, device=device)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            return clock() - t

    steps(2)  # warm-up: the first steps build kernels (and the first optimiser in a process imports more)
    one = steps(1)
    n = min(max_steps, int(budget / max(one, 1e-6)))
    return steps(n) / n if n > 1 else one


@dataclass(frozen=True)
class MachineState:
    """What may make this machine slow, read around the measurement."""

    cpu: str
    threads: int
    usable_cpus: int
    load: float
    others_cpus: float | None = None  # CPUs other processes kept busy during the measurement (Linux)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and widest vector unit ("AMD EPYC, AVX-512"): a virtual machine often
    shows only the family's name, and the vector width decides the convolutions' speed."""
    name, flags = "", set[str]()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or "unknown CPU"
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else ""
    return f"{name}, {vector}" if vector else name


def busy_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds every CPU of the machine has been busy since boot (None where unknown)."""
    try:
        fields = stat.read_text().splitlines()[0].split()
        ticks = [int(v) for v in fields[1:]]
    except (OSError, IndexError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (sum(ticks[:8]) - idle) / hz  # user nice system idle iowait irq softirq steal


def slow_reasons(state: MachineState, reference: Reference = REFERENCE) -> list[str]:
    """The likely causes of a slow step, as short phrases (empty: none that can be seen)."""
    reasons = []
    if state.others_cpus is not None and state.others_cpus >= 0.5:
        reasons.append(f"other processes kept {state.others_cpus:.1f} of {state.usable_cpus} CPUs busy while it was "
                       "measured")
    elif state.load >= state.usable_cpus:
        reasons.append(f"load average {state.load:.1f} on {state.usable_cpus} CPUs: other processes compete")
    if state.threads < reference.threads:
        reasons.append(f"{state.threads} torch thread{'s' if state.threads != 1 else ''} (the reference: "
                       f"{reference.threads}; see --threads)")
    if state.cpu != reference.cpu:
        reasons.append(f"another CPU ({state.cpu}; the reference: {reference.cpu})")
    return reasons


@dataclass(frozen=True)
class PaceReport:
    step_seconds: float
    expected_seconds: float
    reference_step: float
    state: MachineState

    @property
    def slowdown(self) -> float:
        return self.step_seconds / self.reference_step

    def lines(self, profile: Profile, device: str, reference: Reference = REFERENCE) -> list[str]:
        from fader_kit.util.timing import minutes

        out = [f"pace: one EAR training step takes {self.step_seconds:.3f} s here ({profile.name} profile, "
               f"{profile.image_size}px, batch {profile.ear.batch_size}, {device}, {self.state.threads} thread"
               f"{'s' if self.state.threads != 1 else ''}): expected ~{minutes(self.expected_seconds)} for the "
               "training and scoring (the ETA after the first unit is closer)"]
        if torch.device(device).type == "cpu" and self.slowdown >= SLOW_FACTOR:
            why = "; ".join(slow_reasons(self.state, reference)) or "no cause seen (same CPU, threads and no load)"
            out.append(f"warning: this machine trains {self.slowdown:.1f}x slower than the reference "
                       f"({reference.step_seconds:.3f} s per step of the {reference.profile} profile on "
                       f"{reference.cpu}, {reference.threads} threads; {reference.job}): {why}")
        return out


def others_cpus(busy: tuple[float | None, float | None], own: tuple[float, float], wall: float) -> float | None:
    """CPUs other processes kept busy over ``wall`` seconds: the machine's busy CPU seconds (before,
    after) less this process's own (before, after), per second; None where unknown."""
    if busy[0] is None or busy[1] is None or wall <= 0:
        return None
    return max(0.0, ((busy[1] - busy[0]) - (own[1] - own[0])) / wall)


def measure(work: JobWork, profile: Profile, device: str = "cpu", *,
            timer: Callable[[Profile, str], float] | None = None,
            busy: Callable[[], float | None] = busy_seconds,
            reference: Reference = REFERENCE) -> PaceReport:
    """Time the job's EAR step (``timer``: :func:`time_ear_steps`, injectable) and read the machine
    around it; the report holds the expected seconds of ``work``."""
    from fader_kit.util.threads import usable_cpus

    timer = timer or (lambda p, d: time_ear_steps(p, d))
    b0, c0, w0 = busy(), time.process_time(), time.perf_counter()
    step = timer(profile, device)
    b1, c1, w1 = busy(), time.process_time(), time.perf_counter()
    state = MachineState(cpu=cpu_model(), threads=torch.get_num_threads(), usable_cpus=usable_cpus(),
                         load=os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
                         others_cpus=others_cpus((b0, b1), (c0, c1), w1 - w0))
    return PaceReport(step, estimate_seconds(work, profile, step), reference_step(profile, reference), state)


def announce(work: JobWork, profile: Profile, device: str = "cpu", log: Callable[[str], None] = print, *,
             timer: Callable[[Profile, str], float] | None = None) -> PaceReport | None:
    """Before a long job (:func:`is_long`): measure, and log the expected duration and, on a machine
    far slower than the reference, the line that says so and why.  None for a short job."""
    if not is_long(work, profile):
        return None
    report = measure(work, profile, device, timer=timer)
    for line in report.lines(profile, device):
        log(line)
    return report
