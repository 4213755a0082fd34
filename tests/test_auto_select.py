"""``fit --score auto --masker auto``: the default of fit; every candidate in the table; the best
separator is chosen; validation labels decide when given; the budget skips and says so; the model
card and ``selection.json`` keep the table; a fixed ``--score --masker`` runs no search."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fader_kit.maskers.registry as registry_module
from fader_kit.deploy.auto_select import AUTO, fit_auto, plan, read_report, trained_on
from fader_kit.cli.main import main
from fader_kit.deploy.detector import Detector
from fader_kit.errors import ConfigError, ModelDirError
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import Masker
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.deploy.score_kinds import SCORE_NAMES, score_kind
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT
from fader_kit.model.variants import resolve as resolve_variant
from deploy_cases import TINY, part, write_parts


class Seer(Masker):
    """Sees every defect on the grey parts: the distance of each pixel from the parts' grey."""

    def fit(self, images: torch.Tensor) -> None:
        self.threshold = float(self.score_map(images).quantile(0.99))

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return (images - 140 / 255).abs().amax(1, keepdim=True)


class Blind(Masker):
    """Sees nothing: the same score everywhere."""

    threshold = 1.0

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 1, *images.shape[-2:])


class _Plugin:
    @hookimpl
    def register_maskers(self, register):  # type: ignore[no-untyped-def]
        from fader_kit.maskers.registry import MaskerRegistry as Builtins

        patch_stats = next(e for e in Builtins().list() if e.name == "patch_stats")
        register("patch_stats", patch_stats.factory, weights="none")
        register("seer", Seer, weights="none")
        register("blind", Blind, weights="none")


@pytest.fixture(autouse=True)
def fake_maskers(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = MaskerRegistry(entry_points=[], extra_plugins=[_Plugin()])
    monkeypatch.setattr(registry_module, "default_registry", lambda refresh=False: reg)
    monkeypatch.setattr("fader_kit.model.config.get_profile", lambda name: TINY)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 normal parts; a validation folder whose labels call the dark-square parts *good* and plain
    parts *defective*, so the candidate that sees the square ranks them the wrong way round."""
    root = tmp_path_factory.mktemp("auto")
    write_parts(root / "normal", 12, seed=3)
    rng = np.random.default_rng(1)
    for i in range(4):
        (root / "val" / "test" / "good").mkdir(parents=True, exist_ok=True)
        (root / "val" / "test" / "plain").mkdir(parents=True, exist_ok=True)
        Image.fromarray(part(rng, defect=True)).save(root / "val" / "test" / "good" / f"{i}.png")
        Image.fromarray(part(rng)).save(root / "val" / "test" / "plain" / f"{i}.png")
    return root


def fit_cli(root: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--normal", str(root / "normal"), "--out", str(out), "--quiet", "--false-alarm-rate", "0.2",
                 *extra])


def test_fit_chooses_by_default(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake(normal, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        raise ConfigError("stop here")

    monkeypatch.setattr("fader_kit.deploy.auto_select.fit_auto", fake)
    assert fit_cli(root, tmp_path / "m") == 2
    assert seen["masker"] == AUTO and seen["score"] == AUTO and seen["candidates"] is None and seen["budget_s"] is None
    maskers, kinds = plan(AUTO, AUTO, None)
    assert maskers == ["patch_stats", "msflow", "ami_net"] and [k.name for k in kinds] == list(SCORE_NAMES)


def test_the_best_separator_is_chosen_and_the_table_is_kept(root: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    assert fit_cli(root, out, "--score", "masker", "--candidates", "blind,seer,patch_stats") == 0
    text = capsys.readouterr().out
    report = read_report(out)
    assert report is not None
    rows = {r.name: r for r in report.selection.candidates}
    assert set(rows) == {"patch_stats/masker", "seer/masker", "blind/masker"}
    best = max(rows.values(), key=lambda r: r.selection_score)
    assert report.selection.chosen == best.name == "seer/masker"
    assert rows["blind/masker"].pseudo_score == 0.5 and rows["seer/masker"].pseudo_auroc["blob"] == 1.0
    assert report.selection.margin == pytest.approx(
        best.selection_score - sorted(r.selection_score for r in rows.values())[-2])
    assert report.selection.kinds == ["cutpaste", "scratch", "blob", "deform"]  # no candidate trained on any
    assert all(r.fit_s is not None and r.images_per_s and r.images_per_s > 0 for r in rows.values())
    card = (out / "README.md").read_text()
    for name in rows:
        assert name in text and f"| {name} |" in card
    assert "how sure: seer/masker leads the runner-up by" in text and "## Detector selection" in card
    det = Detector.load(out)  # the chosen detector is a plain detector of its kind
    assert (det.settings.masker, det.settings.score) == ("seer", "masker")
    assert json.loads((out / "detector.json").read_text())["sha256"]["selection.json"]
    (out / "selection.json").write_text((out / "selection.json").read_text().replace("seer", "blind"))
    with pytest.raises(ModelDirError, match="selection.json was changed after fitting"):
        Detector.load(out)


def test_validation_labels_decide(root: Path, tmp_path: Path) -> None:
    common = dict(profile=TINY, head_variant=DEFAULT_HEAD_VARIANT, score="masker", candidates=["seer", "blind"],
                  false_alarm_rate=0.2, log=lambda _: None)
    _, pseudo = fit_auto(root / "normal", **common)  # type: ignore[arg-type]
    det, labelled = fit_auto(root / "normal", validation=root / "val", **common)  # type: ignore[arg-type]
    assert pseudo.selection.chosen == "seer/masker"
    rows = {r.name: r for r in labelled.selection.candidates}
    assert labelled.selection.criterion == "validation" and rows["seer/masker"].validation_auroc == 0.0
    assert labelled.selection.chosen == "blind/masker" and det.settings.masker == "blind"
    assert rows["seer/masker"].pseudo_score > 0.7  # the pseudo AUROC is still reported
    assert det.calibration.validation is not None and det.calibration.validation.image_auroc == 0.5


def test_the_budget_skips_candidates_and_says_so(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    assert fit_cli(root, out, "--score", "masker", "--candidates", "seer,blind,patch_stats", "--budget", "1e-9") == 0
    text = capsys.readouterr().out
    report = read_report(out)
    # cheapest first: the built-in patch_stats, then the others in the order named
    assert report is not None and [r.name for r in report.selection.candidates] == ["patch_stats/masker"]
    assert list(report.skipped) == ["seer/masker", "blind/masker"]
    assert "skipped seer/masker: the budget" in text and "not compared: blind/masker (not fitted within" in text
    assert report.selection.margin is None and "one candidate only" in text


def test_every_kind_of_one_masker_with_one_unet(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fader_kit.model.pipeline as pipeline

    trainings = []
    real = pipeline.ear_stage
    monkeypatch.setattr(pipeline, "ear_stage", lambda *a, **k: trainings.append(1) or real(*a, **k))
    det, report = fit_auto(root / "normal", profile=TINY, head_variant=DEFAULT_HEAD_VARIANT,
                           candidates=["seer", "patch_stats"], false_alarm_rate=0.2, log=lambda _: None,
                           out=tmp_path / "m")
    assert len(trainings) == 1 and report.shared_unet  # one U-Net on blobs served both maskers
    rows = {r.name: r for r in report.selection.candidates}
    assert set(rows) == {f"{m}/{k}" for m in ("patch_stats", "seer") for k in SCORE_NAMES}
    head = resolve_variant(TINY.fader_head, DEFAULT_HEAD_VARIANT)
    assert rows["seer/fader"].trained_on == list(trained_on(score_kind("fader"), head)) == ["cutpaste"]
    assert "cutpaste" not in report.selection.kinds  # excluded for every candidate
    assert Detector.load(tmp_path / "m").settings.score == det.settings.score


def test_masker_masks_give_one_unet_and_one_masking_per_masker(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--ear-masks masker`` each masker's three U-Net candidates share its U-Net, and its binary
    masks of the training images are computed once, not once per candidate."""
    import fader_kit.model.pipeline as pipeline

    unets: list[str] = []
    maskings: list[tuple[str, float]] = []
    real_ear, real_masks = pipeline.ear_stage, pipeline.compute_masks
    monkeypatch.setattr(pipeline, "ear_stage", lambda *a, **k: unets.append(k["ear_masks"]) or real_ear(*a, **k))
    monkeypatch.setattr(pipeline, "compute_masks",
                        lambda m, x, **k: maskings.append((type(m).__name__, float(x.double().sum())))
                        or real_masks(m, x, **k))
    _, report = fit_auto(root / "normal", profile=TINY, head_variant=DEFAULT_HEAD_VARIANT, ear_masks="masker",
                         candidates=["seer", "patch_stats"], false_alarm_rate=0.2, log=lambda _: None)
    assert unets == ["masker", "masker"] and not report.shared_unet
    assert len(set(maskings)) == len(maskings)  # no masker masks the same images twice
    assert {name for name, _ in maskings} == {"Seer", "PatchStatsMasker"}
    assert len(report.selection.candidates) == 2 * len(SCORE_NAMES)


def test_a_fixed_masker_and_score_run_no_search(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fader_kit.deploy.auto_select.fit_auto", lambda *a, **k: pytest.fail("a search ran"))
    out = tmp_path / "m"
    assert fit_cli(root, out, "--score", "masker", "--masker", "seer") == 0
    assert not (out / "selection.json").exists() and Detector.load(out).settings.masker == "seer"
    (out / "selection.json").write_text("{}")  # a table its digest list does not name is an extra file
    with pytest.raises(ModelDirError, match="selection.json, which is not a file of this detector"):
        Detector.load(out)
    assert fit_cli(root, tmp_path / "x", "--score", "masker", "--masker", "seer", "--budget", "5") == 2
    with pytest.raises(ConfigError, match="--candidates"):
        plan("seer", AUTO, ["patch_stats"])


def test_a_fusion_with_all_weight_on_one_map_is_that_map_and_leaves_the_race() -> None:
    """Weight 0 on EAR is the masker alone rescaled (the same ranking), weight 1 is plain EAR: such a
    fused candidate would only tie with its twin and hide the real margin."""
    from types import SimpleNamespace

    from fader_kit.deploy.auto_select import same_detectors
    from fader_kit.model.fusion import FusionScales, MapScale

    def det(weight: float | None) -> Detector:
        scale = MapScale(centre=0.0, scale=1.0)
        fusion = None if weight is None else FusionScales(reconstruction=scale, masker=scale, rule="weighted",
                                                          weight=weight)
        return SimpleNamespace(calibration=SimpleNamespace(fusion=fusion))  # type: ignore[return-value]

    fitted = {"a/masker": det(None), "a/ear": det(None), "a/fused": det(0.0),
              "b/masker": det(None), "b/fused": det(0.5), "c/ear": det(None), "c/fused": det(1.0), "d/fused": det(0.0)}
    twins = same_detectors(fitted)
    assert set(twins) == {"a/fused", "c/fused"}  # d has no masker candidate to be the twin of
    assert "a/masker" in twins["a/fused"] and "c/ear" in twins["c/fused"]
