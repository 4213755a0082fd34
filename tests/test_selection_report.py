"""The selection section of metrics.json: known scores give a known choice, regret and rank correlation."""
from __future__ import annotations

import pytest

from fader_kit.engine.selection_report import selection_report, spearman
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit_parts import trained_on
from fader_kit.deploy.score_kinds import score_kind
from fader_kit.model.config import get_profile
from fader_kit.model.variants import resolve


def test_chosen_best_regret_and_spearman_by_hand() -> None:
    rep = selection_report({"a": 0.90, "b": 0.95, "c": 0.70},
                           {"a": (0.80, 0.91), "b": (0.75, 0.92), "c": (0.90, None)})
    assert (rep.chosen, rep.best) == ("b", "c")
    assert rep.regret == pytest.approx(0.15) and rep.margin == pytest.approx(0.05)
    assert (rep.chosen_image_auroc, rep.chosen_pixel_auroc, rep.best_image_auroc) == (0.75, 0.92, 0.90)
    assert rep.spearman == pytest.approx(-1.0)  # ranks 2,3,1 against 2,1,3


def test_unscored_candidates_are_reported_not_chosen_and_ties_go_first() -> None:
    rep = selection_report({"x": None, "y": 0.8, "z": 0.8}, {"x": (0.99, None), "y": (0.7, None), "z": (0.6, None)})
    assert rep.chosen == "y" and rep.best == "x" and rep.regret == pytest.approx(0.29)
    assert rep.spearman is None  # two scored candidates: no rank correlation
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None
    with pytest.raises(ConfigError, match="differ"):
        selection_report({"a": 0.5}, {"b": (0.5, None)})


def test_trained_on_excludes_what_each_kind_learned_from() -> None:
    base = get_profile("smoke").fader_head
    assert trained_on(score_kind("ear"), base) == () and trained_on(score_kind("masker"), base) == ()
    assert trained_on(score_kind("fused"), base) == ("cutpaste",)
    assert trained_on(score_kind("fader"), resolve(base, "procedural")) == ("cutpaste", "blob")
