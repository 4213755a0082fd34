"""Detector selection: the better separator wins, trained-on kinds are excluded for everyone,
margin and regret by hand, validation decides when given, the budget stops, the table renders."""
from __future__ import annotations

import pytest
import torch

from fader_kit.errors import ConfigError
from fader_kit.deploy.selection import (
    Candidate,
    budget_order,
    build_pseudo_sets,
    choose,
    fit_within_budget,
    holdout_split,
    regret,
    select,
)


def _template(size: int = 32) -> torch.Tensor:
    """The normal appearance: red ramps along x, green along y (so any move of a pixel shows)."""
    ramp = 0.1 + 0.8 * torch.arange(size, dtype=torch.float32) / size
    return torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), torch.full((size, size), 0.5)])


def _normal(n: int = 8, size: int = 32) -> torch.Tensor:
    noise = 0.01 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return _template(size) + noise


def deviation(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sees every defect: the largest deviation from the normal appearance (and the map of it)."""
    maps = (images - _template(images.shape[-1])).abs().amax(1, keepdim=True)
    return maps.flatten(1).amax(1), maps


def blind(images: torch.Tensor) -> torch.Tensor:
    """Sees nothing: the same score for every image."""
    return torch.zeros(images.shape[0])


def position(images: torch.Tensor) -> torch.Tensor:
    """Ignores the content too: the image's place in the batch."""
    return torch.arange(images.shape[0], dtype=torch.float32)


def test_the_candidate_that_separates_is_chosen() -> None:
    sel = select([Candidate("blind", blind), Candidate("deviation", deviation)], _normal(), seed=0)
    assert sel.chosen == "deviation" and sel.criterion == "pseudo-defects"
    rows = {c.name: c for c in sel.candidates}
    assert rows["deviation"].pseudo_score > 0.9 and rows["blind"].pseudo_score == 0.5
    assert set(rows["deviation"].pseudo_pixel_auroc) == set(sel.kinds)  # maps give pixel AUROC
    assert rows["blind"].pseudo_pixel_auroc == {}
    assert sel.margin == pytest.approx(rows["deviation"].selection_score - rows["blind"].selection_score)
    assert sel.margin > 0.4


def test_kinds_a_candidate_trained_on_are_excluded_for_every_candidate() -> None:
    cands = [Candidate("head", deviation, trained_on=("cutpaste",)), Candidate("masker", blind)]
    sel = select(cands, _normal(), seed=0, kinds=("cutpaste", "scratch", "blob"))
    assert sel.kinds == ["scratch", "blob"] and sel.excluded_kinds == ["cutpaste"]
    for c in sel.candidates:
        assert set(c.pseudo_auroc) == {"scratch", "blob"}  # the same kinds for both: comparable


def test_nothing_left_to_compare_on_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="trained on"):
        select([Candidate("head", deviation, trained_on=("cutpaste",))], _normal(), seed=0, kinds=("cutpaste",))
    with pytest.raises(ConfigError, match="unknown pseudo-defect kind"):
        select([Candidate("x", deviation, trained_on=("paste",))], _normal(), seed=0)


def test_validation_auroc_decides_when_given() -> None:
    # validation images on which the content-blind score happens to be right (batch order = labels)
    images, labels = _normal(6), torch.tensor([0, 0, 0, 1, 1, 1])
    sel = select([Candidate("deviation", deviation), Candidate("position", position)], _normal(), seed=0,
                 validation=(images, labels), timings={"position": (1.5, 20.0)})
    assert sel.criterion == "validation" and sel.chosen == "position"
    rows = {c.name: c for c in sel.candidates}
    assert rows["position"].validation_auroc == 1.0 and rows["position"].fit_s == 1.5
    assert rows["deviation"].pseudo_score > 0.9  # still reported beside it


def test_margin_and_ties_by_hand() -> None:
    assert choose({"a": 0.80, "b": 0.95, "c": 0.90}) == ("b", pytest.approx(0.05))
    assert choose({"a": 0.9, "b": 0.9}) == ("a", 0.0)  # a tie goes to the earlier candidate
    assert choose({"only": 0.7}) == ("only", None)


def test_regret_by_hand() -> None:
    test = {"patch_stats": 0.70, "msflow": 0.97, "ami_net": 0.93}
    assert regret(test, "ami_net") == pytest.approx(0.04)
    assert regret(test, "msflow") == 0.0
    with pytest.raises(ConfigError, match="chosen"):
        regret(test, "dsr")


def test_budget_fits_in_order_and_stops_when_spent() -> None:
    now = [0.0]
    cost = {"patch_stats": 1.0, "msflow": 60.0, "ami_net": 150.0, "mine": 5.0}

    def clock() -> float:
        return now[0]

    def fit(name: str) -> str:
        now[0] += cost[name]
        return name

    assert budget_order(["mine", "ami_net", "patch_stats", "msflow"]) == ["patch_stats", "msflow", "ami_net", "mine"]
    run = fit_within_budget(["mine", "ami_net", "patch_stats", "msflow"], fit, budget_s=30.0, clock=clock)
    assert list(run.fitted) == ["patch_stats", "msflow"]  # msflow started at 1 s < 30 s and finished
    assert run.skipped == ["ami_net", "mine"] and run.fit_s == {"patch_stats": 1.0, "msflow": 60.0}
    now[0] = 0.0
    assert list(fit_within_budget(["ami_net", "msflow"], fit, budget_s=None, clock=clock).fitted) == ["msflow", "ami_net"]
    with pytest.raises(ConfigError, match="budget_s"):
        fit_within_budget(["msflow"], fit, budget_s=0.0)


def test_holdout_split_is_disjoint_seeded_and_bounded() -> None:
    fit, held = holdout_split(20, 0.2, seed=1)
    assert len(held) == 4 and len(fit) == 16 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(holdout_split(20, 0.2, seed=1)[1], held)
    with pytest.raises(ConfigError, match="too few"):
        holdout_split(4, 0.2, seed=0)


def test_table_lists_every_candidate_and_the_choice() -> None:
    sel = select([Candidate("blind", blind), Candidate("deviation", deviation)], _normal(), seed=0,
                 timings={"deviation": (2.0, 100.0)})
    md = sel.table()
    assert md.splitlines()[0].startswith("| candidate |") and "| deviation |" in md
    assert "pseudo scratch" in md and "chosen: deviation" in md and "| 2.0 | 100.0 | yes |" in md
    plain = sel.table("plain")
    assert "|" not in plain.splitlines()[0] and "deviation" in plain
    assert sel.model_validate_json(sel.model_dump_json()) == sel  # the model card keeps it as JSON
    with pytest.raises(ConfigError, match="fmt"):
        sel.table("html")


def test_pseudo_sets_hold_copies_of_every_held_out_image() -> None:
    sets = build_pseudo_sets(_normal(4), seed=0, kinds=("scratch", "deform"), copies=3)
    assert [s.kind for s in sets] == ["scratch", "deform"]
    assert sets[0].images.shape == (12, 3, 32, 32) and sets[0].masks.shape == (12, 1, 32, 32)
    assert not torch.equal(sets[0].masks[:4], sets[0].masks[4:8])  # each copy its own defect
    with pytest.raises(ConfigError, match="copies"):
        build_pseudo_sets(_normal(4), seed=0, copies=0)
