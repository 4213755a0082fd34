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


@pytest.fixture(scope="session")
def smoke_ears(tmp_path_factory: pytest.TempPathFactory):
    """``smoke_ears(out, seeds)`` puts the smoke-profile EAR U-Nets of synthetic ``washer`` into the
    compute cache of the results folder ``out``, as a rerun would find them.  Each seed's U-Net is
    trained once per test session (blobs only, one thread): the tests that run ``evaluate`` or
    ``bench`` on that category share it instead of training it again."""
    import shutil
    from pathlib import Path

    from fader_kit.model.config import get_profile
    from fader_kit.engine.artifacts import WorkCache
    from fader_kit.engine.sources import MaskerSource
    from fader_kit.engine.workbench import CategoryWorkbench, WorkbenchSettings

    cache = WorkCache(tmp_path_factory.mktemp("smoke_ears"))
    trained: dict[int, Path] = {}

    def seed(out: Path, seeds: tuple[int, ...] = (0,)) -> None:
        for s in seeds:
            if s not in trained:
                settings = WorkbenchSettings(data="synthetic", category="washer", profile=get_profile("smoke"), seed=s)
                bench = CategoryWorkbench(settings, cache, log=lambda _: None)
                bench.unet(MaskerSource("patch_stats"))  # blob-trained: the same U-Net for every masker
                trained[s] = cache.ear_path(bench.keys(MaskerSource("patch_stats"), None).ear)
            target = Path(out) / "cache" / "ear" / trained[s].name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trained[s], target)

    return seed
