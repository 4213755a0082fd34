"""Timing: a stopwatch for stages, and one call timed with the device synchronised."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds one call of ``fn`` takes, the device's queued work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


class Stopwatch:
    """Named stage timings: ``with watch("ear_train"): ...`` adds the seconds to ``watch.seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def minutes(seconds: float) -> str:
    """A duration as people read it: seconds under a minute and a half, else minutes."""
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"
