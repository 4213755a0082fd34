"""The selection section of metrics.json: known scores give a known choice, regret and rank correlation."""
from __future__ import annotations

import pytest

from fader_kit.engine.selection_report import selection_report, spearman
from fader_kit.errors import ConfigError
from fader_kit.deploy.fit_parts import trained_on
from fader_kit.deploy.score_kinds import fused_twin, score_kind
from fader_kit.model.fusion import FusionScales, MapScale
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


def test_a_twin_is_reported_but_not_in_the_race() -> None:
    """fused equals the masker alone (weight 0): it neither wins nor is the runner-up, so the margin
    is the lead over a different detector; the best is read over every candidate."""
    scores, test = {"masker": 0.90, "ear": 0.85, "fused": 0.90}, {"masker": (0.7, None), "ear": (0.8, None),
                                                                    "fused": (0.7, None)}
    rep = selection_report(scores, test, twins={"fused": "masker"})
    assert rep.chosen == "masker" and rep.margin == pytest.approx(0.05)  # 0.00 if the twin counted
    assert [c.same_as for c in rep.candidates] == [None, None, "masker"]
    assert selection_report(scores, test).margin == pytest.approx(0.0)
    rep = selection_report({**scores, "fused": 0.95}, test, twins={"fused": "masker"})
    assert rep.chosen == "masker" and rep.best == "ear" and rep.regret == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="not scored"):
        selection_report(scores, test, twins={"fused": "fader"})


def test_a_fusion_is_a_twin_only_when_all_its_weight_is_on_one_map() -> None:
    scale = MapScale(centre=0.0, scale=1.0)

    def fusion(rule: str, weight: float) -> FusionScales:
        return FusionScales(reconstruction=scale, masker=scale, rule=rule, weight=weight)  # type: ignore[arg-type]

    assert fused_twin(fusion("weighted", 1.0)) == "ear" and fused_twin(fusion("weighted", 0.0)) == "masker"
    assert fused_twin(fusion("weighted", 0.25)) is None and fused_twin(fusion("sum", 0.0)) is None
    assert fused_twin(None) is None

    from types import SimpleNamespace

    from fader_kit.engine.selection_run import twin_of

    parts = SimpleNamespace(fusion=fusion("weighted", 0.0))
    assert twin_of(score_kind("fused"), parts, {"masker", "fused"}) == "masker"  # type: ignore[arg-type]
    assert twin_of(score_kind("fused"), parts, {"ear", "fused"}) is None  # type: ignore[arg-type]  # no masker to equal
    assert twin_of(score_kind("ear"), parts, {"masker", "ear"}) is None  # type: ignore[arg-type]


def test_trained_on_excludes_what_each_kind_learned_from() -> None:
    base = get_profile("smoke").fader_head
    assert trained_on(score_kind("ear"), base) == () and trained_on(score_kind("masker"), base) == ()
    assert trained_on(score_kind("fused"), base) == ("cutpaste",)
    assert trained_on(score_kind("fader"), resolve(base, "procedural")) == ("cutpaste", "blob")
