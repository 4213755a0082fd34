"""Test-wide settings: offline, small thread count, a private cache for generated data."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: a test run shares the machine with whatever else runs, and OpenMP threads that
# outnumber free cores spin-wait (measured here: 5x slower at 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated synthetic data goes to a per-session folder, never the user's cache."""
    os.environ["FADER_KIT_CACHE"] = str(tmp_path_factory.mktemp("fader_kit_cache"))
