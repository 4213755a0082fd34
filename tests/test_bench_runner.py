"""The benchmark runner: resume, failure recording, shared work and cache keys (smoke profile,
a tiny synthetic category, cheap test maskers registered like a third-party plugin)."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

import fader_kit.model.pipeline as stages_mod  # the training stages the workbench runs (train_ear, train_fader_on)
from fader_kit.engine import keys
from fader_kit.engine.store import ResultStore
from fader_kit_bench.runner import BenchConfig, masker_options_for, run_table, table_runner
from fader_kit.model.config import get_profile
from fader_kit.data import SyntheticConfig
from fader_kit.errors import ConfigError
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.interfaces import Masker, MaskerInfo
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.maskers.weights import MissingWeightsError

TINY = SyntheticConfig(n_train=6, n_test_good=2, n_per_defect=1, defect_kinds=("scratch", "hole"))


class DiffMasker(Masker):
    """Masks pixels far from the mean normal image: cheap, fitted, deterministic."""

    def __init__(self, name: str = "diff", quantile: float = 0.95, **_: object) -> None:
        self.name, self.quantile = name, quantile
        self.mean: torch.Tensor | None = None
        self.threshold = None

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(name=self.name, weights="trained-here")

    def fit(self, images, *, seed=0, progress=False):
        self.mean = images.mean(dim=0, keepdim=True).cpu()
        self.threshold = float(torch.quantile(self.score_map(images).flatten(), self.quantile))
        return self

    def score_map(self, images):
        return (images.cpu() - self.mean).abs().mean(dim=1, keepdim=True)

    def state_dict(self):
        return {"threshold": self.threshold, "mean": self.mean}

    def load_state_dict(self, state):
        self.threshold, self.mean = state["threshold"], state["mean"]


class ThirdPartyPlugin:
    """A third-party plugin: two working maskers and one whose weights are missing."""

    calls: dict[str, int] = {}

    @hookimpl
    def register_maskers(self, register):
        def make(name):
            def factory(**options):
                ThirdPartyPlugin.calls[name] = ThirdPartyPlugin.calls.get(name, 0) + 1
                return DiffMasker(name, **options)
            return factory

        def broken(**options):
            ThirdPartyPlugin.calls["broken"] = ThirdPartyPlugin.calls.get("broken", 0) + 1
            raise MissingWeightsError("no weights for broken_vit: put broken_vit.safetensors in FADER_KIT_WEIGHTS")

        register("diff_a", make("diff_a"))
        register("diff_b", make("diff_b"))
        register("broken", broken, weights="hub:broken_vit")


def registry() -> MaskerRegistry:
    ThirdPartyPlugin.calls = {}
    return MaskerRegistry(entry_points=[], extra_plugins=[ThirdPartyPlugin()])


def config(out: Path, **kw) -> BenchConfig:
    base = dict(table="table3", out=out, categories=("washer",), maskers=("diff_a",), variants=("ear", "ours"),
                profile="smoke", synthetic=TINY, figures=0)
    return BenchConfig(**{**base, **kw})


@pytest.fixture
def counting(monkeypatch):
    """Count the expensive stages the runner calls (through the workbench)."""
    counts = {"train_ear": 0, "train_fader_on": 0}
    real_ear, real_fader = stages_mod.train_ear, stages_mod.train_fader_on

    def train_ear(*a, **k):
        counts["train_ear"] += 1
        return real_ear(*a, **k)

    def train_fader_on(*a, **k):
        counts["train_fader_on"] += 1
        return real_fader(*a, **k)

    monkeypatch.setattr(stages_mod, "train_ear", train_ear)
    monkeypatch.setattr(stages_mod, "train_fader_on", train_fader_on)
    return counts


def _quiet(_msg: str) -> None:
    pass


def test_interrupted_run_resumes_without_recomputing(tmp_path, monkeypatch):
    cfg = config(tmp_path, variants=("ear", "ours", "hard", "bilinear"))
    real = stages_mod.train_fader_on
    calls = {"n": 0}

    def interrupt_second(*a, **k):  # the user presses Ctrl-C during the second FADeR training
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stages_mod, "train_fader_on", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_table(cfg, registry=registry(), log=_quiet)
    rows = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert set(rows) == {"ear", "ours"} and all(r.status == "ok" for r in rows.values())

    calls["n"] = -100  # no more interruptions; count the trainings of the rerun
    s = run_table(cfg, registry=registry(), log=_quiet)
    assert (s.skipped, s.computed, s.failed) == (2, 2, 0)
    assert calls["n"] == -98  # two FADeR trainings: hard and bilinear only
    assert s.ear_trained == 0 and s.maskers_fitted == 0  # U-Net and masks came from the cache
    after = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert set(after) == {"ear", "ours", "hard", "bilinear"}
    for v in ("ear", "ours"):  # finished rows are untouched, not recomputed
        assert after[v].finished_at == rows[v].finished_at and after[v].image_auroc == rows[v].image_auroc


def test_an_exception_in_one_unit_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    real = stages_mod.train_fader_on

    def fail_vit(unet, images, masks, fader_config, *a, **k):
        if fader_config.head == "vit":
            raise RuntimeError("simulated out of memory")
        return real(unet, images, masks, fader_config, *a, **k)

    monkeypatch.setattr(stages_mod, "train_fader_on", fail_vit)
    cfg = config(tmp_path, variants=("ear", "vit", "ours"))
    s = run_table(cfg, registry=registry(), log=_quiet)
    rows = {r.unit.variant: r for r in ResultStore(tmp_path).rows()}
    assert s.failed == 1 and rows["vit"].status == "failed"
    assert rows["vit"].reason == "RuntimeError: simulated out of memory"
    assert "Traceback" in rows["vit"].config["traceback"] and "fail_vit" in rows["vit"].config["traceback"]
    assert rows["ear"].status == rows["ours"].status == "ok"

    monkeypatch.setattr(stages_mod, "train_fader_on", real)  # fixed: a rerun retries only the failure
    s = run_table(cfg, registry=registry(), log=_quiet)
    assert (s.skipped, s.computed, s.failed) == (2, 1, 0)
    assert ResultStore(tmp_path).get(rows["vit"].unit).status == "ok"


def test_missing_weights_is_recorded_failed_and_the_other_maskers_run(tmp_path, counting):
    reg = registry()
    cfg = config(tmp_path, table="table2", maskers=("broken", "diff_a"), variants=None)
    lines: list[str] = []
    s = run_table(cfg, registry=reg, log=lines.append)
    rows = {(r.unit.masker, r.unit.variant): r for r in ResultStore(tmp_path).rows()}
    assert set(rows) == {("broken", "ear"), ("broken", "fader"), ("diff_a", "ear"), ("diff_a", "fader")}
    for v in ("ear", "fader"):
        r = rows[("broken", v)]
        assert r.status == "failed"
        assert r.reason == ("MissingWeightsError: no weights for broken_vit: put broken_vit.safetensors "
                            "in FADER_KIT_WEIGHTS")
        assert rows[("diff_a", v)].status == "ok" and rows[("diff_a", v)].weights == "trained-here"
    assert s.failed == 2 and ThirdPartyPlugin.calls["broken"] == 1  # the failure is remembered, not retried per variant
    assert any("FAILED: MissingWeightsError" in line for line in lines)


def test_one_ear_unet_serves_every_masker(tmp_path, counting):
    cfg = config(tmp_path, table="table2", maskers=("diff_a", "diff_b"), variants=("ear",))
    s = run_table(cfg, registry=registry(), log=_quiet)
    assert s.computed == 2 and counting["train_ear"] == 1 and s.ear_trained == 1
    assert len(list((tmp_path / "cache" / "ear").glob("ear-*.pt"))) == 1
    assert len(list((tmp_path / "cache" / "masks").glob("*.pt"))) == 2
    assert len(list((tmp_path / "cache" / "maskers").glob("*.pt"))) == 2
    rows = ResultStore(tmp_path).rows()
    assert len({r.config["ear_key"] for r in rows}) == 1 and len({r.config["masker_key"] for r in rows}) == 2


def test_ear_on_masker_masks_trains_one_unet_per_masker(tmp_path, monkeypatch):
    seen = []
    real = stages_mod.train_ear

    def train_ear(images, masks, *a, **k):
        seen.append(masks)
        return real(images, masks, *a, **k)

    monkeypatch.setattr(stages_mod, "train_ear", train_ear)
    cfg = config(tmp_path, table="table2", maskers=("diff_a", "diff_b"), variants=("ear",), ear_masks="masker")
    s = run_table(cfg, registry=registry(), log=_quiet)
    assert s.ear_trained == 2 and len(seen) == 2 and all(m is not None and m.dtype == torch.bool for m in seen)
    rows = ResultStore(tmp_path).rows()
    assert len({r.config["ear_key"] for r in rows}) == 2 and {r.config["ear_masks"] for r in rows} == {"masker"}
    blobs = table_runner(config(tmp_path, table="table2", maskers=("diff_a",), variants=("ear",)), registry=registry())
    assert blobs.plan()[0].keys.ear not in {r.config["ear_key"] for r in rows}  # a different U-Net, a different key


def test_same_settings_in_another_table_are_copied_not_recomputed(tmp_path, counting):
    run_table(config(tmp_path, variants=("ours",)), registry=registry(), log=_quiet)
    assert counting["train_fader_on"] == 1
    s = run_table(config(tmp_path, table="table2", variants=("fader",)), registry=registry(), log=_quiet)
    assert s.copied == 1 and s.computed == 0 and counting["train_fader_on"] == 1
    store = ResultStore(tmp_path)
    t2 = [r for r in store.rows() if r.unit.table == "table2"][0]
    t3 = [r for r in store.rows() if r.unit.table == "table3"][0]
    assert t2.reused_from == t3.unit.label() and t2.image_auroc == t3.image_auroc and t2.work_key == t3.work_key


def test_changed_masker_option_recomputes_but_reuses_the_ear_unet(tmp_path, counting):
    run_table(config(tmp_path, variants=("ear",)), registry=registry(), log=_quiet)
    before = ResultStore(tmp_path).rows()[0]
    s = run_table(config(tmp_path, variants=("ear",), masker_options={"quantile": 0.5}), registry=registry(), log=_quiet)
    after = ResultStore(tmp_path).rows()
    assert len(after) == 1 and s.computed == 1 and s.skipped == 0
    assert after[0].work_key != before.work_key and after[0].config["masker_options"] == {"quantile": 0.5}
    assert counting["train_ear"] == 2 and s.ear_trained == 0  # second call loaded the cached U-Net
    assert after[0].config["masked_fraction_test"] > before.config["masked_fraction_test"]


def test_figures_are_written_for_fader_units(tmp_path):
    s = run_table(config(tmp_path, variants=("ear", "ours"), figures=1), registry=registry(), log=_quiet)
    assert s.failed == 0
    row = [r for r in ResultStore(tmp_path).rows() if r.unit.variant == "ours"][0]
    png = tmp_path / row.config["figure"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r for r in ResultStore(tmp_path).rows() if r.unit.variant == "ear"][0].config["figure"] is None


def test_unknown_masker_or_category_is_one_clear_error(tmp_path):
    with pytest.raises(KeyError, match="unknown masker.*nope"):
        table_runner(config(tmp_path, maskers=("nope",)), registry=registry()).plan()
    with pytest.raises(ConfigError, match="--categories: bottle not in synthetic"):
        table_runner(config(tmp_path, categories=("bottle",)), registry=registry()).plan()
    with pytest.raises(ValueError, match="table table3 has no variant 'fancy'"):
        table_runner(config(tmp_path, variants=("fancy",)), registry=registry()).plan()


def test_masker_options_can_be_scoped_to_one_masker(tmp_path):
    cfg = config(tmp_path, table="table2", maskers=("diff_a", "diff_b"), variants=("ear",),
                 masker_options={"weights": "/w", "diff_a.quantile": 0.5, "other.x": 1})
    names = {"diff_a", "diff_b"}
    assert masker_options_for(cfg.masker_options, "diff_a", names) == {"weights": "/w", "other.x": 1, "quantile": 0.5}
    assert masker_options_for(cfg.masker_options, "diff_b", names) == {"weights": "/w", "other.x": 1}
    a, b = [u for u in table_runner(cfg, registry=registry()).plan()]
    assert a.keys.masks != b.keys.masks


# -- cache keys -------------------------------------------------------------------------------------
def test_masker_key_covers_what_changes_the_masks():
    base = dict(name="dino_vit", options={"top_mass": 0.6}, data="synthetic", category="washer", image_size=128, seed=0)
    k = keys.masker_key(**base)
    assert keys.masker_key(**base) == k
    assert keys.masker_key(**{**base, "options": {"top_mass": 0.6, "device": "cuda"}}) == k  # where, not what
    for change in ({"options": {"top_mass": 0.5}}, {"name": "plain_vit"}, {"data": "mvtec:/d"},
                   {"category": "plate"}, {"image_size": 256}, {"seed": 1}):
        assert keys.masker_key(**{**base, **change}) != k, change


def test_ear_key_ignores_maskers_and_follows_training_settings():
    p = get_profile("smoke")
    k = keys.ear_key("synthetic", "washer", p, 0)
    assert keys.ear_key("synthetic", "washer", p, 0) == k
    assert keys.ear_key("synthetic", "washer", p.model_copy(update={"ear": p.ear.model_copy(update={"epochs": 3})}), 0) != k
    assert keys.ear_key("synthetic", "washer", p.model_copy(update={"fader": p.fader.model_copy(update={"lr": 0.5})}), 0) == k
    assert keys.ear_key("synthetic", "plate", p, 0) != k and keys.ear_key("synthetic", "washer", p, 1) != k
    assert keys.data_key("synthetic", TINY) != "synthetic" and keys.data_key("synthetic", TINY) == keys.data_key("synthetic", TINY)


def test_the_synthetic_data_seed_is_in_every_key(tmp_path, counting):
    """Other synthetic data (another data seed) recomputes everything; a folder of real images has no data seed."""
    assert keys.data_key("synthetic", TINY, 1) != keys.data_key("synthetic", TINY, 0)
    assert keys.data_key("mvtec:/d", None, 1) == keys.data_key("mvtec:/d", None, 0) == "mvtec:/d"
    run_table(config(tmp_path, variants=("ear",)), registry=registry(), log=_quiet)
    s = run_table(config(tmp_path, variants=("ear",), data_seed=1), registry=registry(), log=_quiet)
    assert s.computed == 1 and s.skipped == 0 and counting["train_ear"] == 2 and s.ear_trained == 1
    assert len(list((tmp_path / "cache" / "ear").glob("ear-*.pt"))) == 2


def test_work_key_follows_the_head_only_for_fader_variants():
    p = get_profile("smoke")
    p2 = p.model_copy(update={"fader": p.fader.model_copy(update={"lr": 0.5})})
    kw = dict(ear="e", masker="m", seed=0)
    ours = keys.work_key(fader=p.fader_head, profile=p, **kw)
    assert keys.work_key(fader=p.fader_head, profile=p, **kw) == ours
    assert keys.work_key(fader=p.fader_head.model_copy(update={"theta": "bilinear"}), profile=p, **kw) != ours
    assert keys.work_key(fader=p.fader_head, profile=p2, **kw) != ours
    assert keys.work_key(fader=None, profile=p, **kw) == keys.work_key(fader=None, profile=p2, **kw)  # EAR: no head
    assert keys.work_key(fader=p.fader_head, profile=p, ear="e2", masker="m", seed=0) != ours


def test_registered_entry_points_are_not_needed_for_a_plugin_masker():
    # the runner takes any registry: third-party maskers go through the same road
    names = {e.name for e in registry().list()}
    assert names == {"diff_a", "diff_b", "broken"}
    assert "patch_stats" in {ep.name for ep in importlib.metadata.entry_points(group="fader_kit")}


def test_a_setting_that_does_not_apply_keeps_every_key(tmp_path):
    """vit_dim of an MLP head changes nothing: same keys, so the row is reused; FADeR's ranking_pairs
    changes the FADeR row but not the EAR U-Net's key; the head's hidden width changes the row."""
    from fader_kit.engine.runner import GridRunner

    grid = table_runner(config(tmp_path, variants=("ours",)), registry=registry()).grid
    head = grid.heads[0]

    def keys_of(**update):
        return GridRunner(grid.model_copy(update=update), registry=registry()).plan()[0].keys

    base = keys_of()
    assert keys_of(heads=(head.model_copy(update={"config": head.config.model_copy(update={"vit_dim": 128})}),)) == base
    pairs = grid.profile.model_copy(update={"fader": grid.profile.fader.model_copy(update={"ranking_pairs": 7})})
    changed = keys_of(profile=pairs)
    assert changed.ear == base.ear and changed.masks == base.masks and changed.work != base.work
    wider = keys_of(heads=(head.model_copy(update={"config": head.config.model_copy(update={"hidden": 64})}),))
    assert wider.ear == base.ear and wider.work != base.work
