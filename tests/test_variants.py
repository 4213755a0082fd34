"""The registry of named head variants (fader_kit.model.variants): every name that worked before the
registry resolves to the same configuration and trains to the same numbers; aliases; errors;
checkpoints of experimental variants; the labels a results row prints."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from fader_kit.model.config import PROFILES, FaderConfig, fader_config, get_profile
from fader_kit.model.config_legacy import LEGACY_FIELDS, to_legacy
from fader_kit.errors import ConfigError
from fader_kit.model.fader import FaderModel, wrap_with_fader
from fader_kit.model.training import seeded_init
from fader_kit.model.unet import EARUNet
from fader_kit.model.variants import (
    DEFAULT_HEAD_VARIANT, HEAD_VARIANTS, canonical_name, get_variant, list_variants, resolve, variant_names,
)

# -- frozen copies of what the code before the registry defined ----------------------------------
#: FaderConfig's 21 fields and their defaults before the experimental switches moved out
OLD_DEFAULTS: dict[str, object] = {
    "patch_size": 8, "hidden": 128, "activation": "relu", "head": "mlp", "vit_dim": 64, "vit_depth": 2,
    "vit_heads": 4, "margin": 0.01, "masking": "soft", "hard_threshold": 0.5, "normaliser": "minmax",
    "calibration_quantile": 0.995, "calibration_width": 2.0, "theta": "nearest", "target": "gated",
    "context": "token", "pseudo_anomalies": 0.0, "pseudo_area": 0.04, "pseudo_source": "image", "focus": "all",
    "gates": "head",
}
#: fader_kit.model.config.HEAD_VARIANTS as it was
OLD_HEAD_VARIANTS: dict[str, dict[str, object]] = {
    "paper": {},
    "calibrated": {"normaliser": "calibrated"},
    "ungated": {"target": "ungated"},
    "neighbours": {"context": "neighbours"},
    "pseudo": {"pseudo_anomalies": 1.0},
    "pseudo_calibrated": {"pseudo_anomalies": 1.0, "normaliser": "calibrated"},
    "open_gates": {"gates": "open"},
    "focused": {"normaliser": "calibrated", "focus": "unmasked"},
    "pseudo_focused": {"pseudo_anomalies": 1.0, "normaliser": "calibrated", "focus": "unmasked", "target": "ungated"},
    "procedural": {"pseudo_anomalies": 1.0, "pseudo_source": "procedural", "focus": "unmasked", "target": "ungated"},
    "procedural_focused": {"pseudo_anomalies": 1.0, "pseudo_source": "procedural", "normaliser": "calibrated",
                           "focus": "unmasked", "target": "ungated"},
}
#: benchmarks/tables.py's columns as they were: table -> column -> changes (None = plain EAR)
OLD_TABLE_COLUMNS: dict[str, dict[str, dict[str, object] | None]] = {
    "table2": {"ear": None, "fader": {}},
    "table3": {"ear": None, "vit": {"head": "vit"}, "hard": {"masking": "hard"}, "bilinear": {"theta": "bilinear"},
               "ours": {}, "sigmoid": {"normaliser": "sigmoid"}},
    "fader_head": {"ear": None, "fader": {}, **{k: v for k, v in OLD_HEAD_VARIANTS.items() if k != "paper"}},
    "coverage": {"ear": None, "fader": {}, **{k: v for k, v in OLD_HEAD_VARIANTS.items() if k != "paper"}},
    "table4": {"ear": None, "fader": {}},
    "table5": {"ear": None, "fader": {}},
}
#: every name that selected a head before: the old head variants, table3's ablation columns, "fader", "ours"
OLD_NAMES: dict[str, dict[str, object]] = {
    **OLD_HEAD_VARIANTS, **{k: v for k, v in OLD_TABLE_COLUMNS["table3"].items() if v is not None}, "fader": {},
}


def effective(config: FaderConfig) -> dict[str, object]:
    """Every setting the head runs with, flat, as the old FaderConfig and its experiment fields held them."""
    dump = {k: v for k, v in config.model_dump(mode="json").items() if k not in ("head_input", "gates")}
    legacy = to_legacy(config.head_input, config.gates)
    assert legacy is not None, "every head that existed before the strategies has an old spelling"
    return {**dump, **legacy}


def old_config(base: FaderConfig, changes: dict[str, object]) -> dict[str, object]:
    return {**OLD_DEFAULTS, **effective(base), **changes}


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("name", sorted(OLD_NAMES))
def test_every_old_name_resolves_to_the_old_configuration(profile, name):
    base = get_profile(profile).fader_head
    cfg = resolve(base, name)
    assert effective(cfg) == old_config(base, OLD_NAMES[name])
    assert resolve(base, name) == cfg  # the registry agrees with itself through its public entry point
    assert type(cfg) is FaderConfig  # one configuration model
    assert fader_config(old_config(base, OLD_NAMES[name])) == cfg  # the old flat spelling loads as the same head


def test_the_old_names_and_the_default_are_in_the_registry():
    # every old name is still a head variant (its changes: the test above); later rounds only add names
    assert set(OLD_HEAD_VARIANTS) <= set(HEAD_VARIANTS)
    assert DEFAULT_HEAD_VARIANT == "pseudo_focused"


@pytest.mark.parametrize("table", sorted(OLD_TABLE_COLUMNS))
def test_table_columns_resolve_to_the_old_configurations(table):
    from fader_kit_bench.tables import TABLES

    spec = TABLES[table]
    old_names = list(OLD_TABLE_COLUMNS[table])
    # stored results keep their names; later head variants are appended after the old columns
    assert [v.name for v in spec.variants][: len(old_names)] == old_names
    base = get_profile("cpu").fader_head
    for v in spec.variants[: len(old_names)]:
        old = OLD_TABLE_COLUMNS[table][v.name]
        if old is None:
            assert v.is_ear and v.fader_config(base) is None
        else:
            assert v.head is not None and effective(v.fader_config(base)) == old_config(base, old)


def test_one_name_per_configuration():
    """Aliases resolve to one canonical name, and no two canonical names give one configuration."""
    assert canonical_name("fader") == canonical_name("ours") == canonical_name("paper") == "paper"
    assert get_variant("ours") is get_variant("paper")
    base = get_profile("smoke").fader_head
    assert resolve(base, "ours") == resolve(base, "fader") == base
    configs = [json.dumps(effective(resolve(base, n)), sort_keys=True) for n in variant_names(aliases=False)]
    assert len(set(configs)) == len(configs)
    assert variant_names(aliases=False) == [v.name for v in list_variants()]
    assert {v.kind for v in list_variants()} == {"paper", "ablation", "experiment", "control"}
    assert [v.name for v in list_variants("control")] == ["open_gates"]
    assert [v.name for v in list_variants("ablation")] == ["vit", "hard", "bilinear", "sigmoid"]
    assert all(v.description and "\n" not in v.description for v in list_variants())


def test_unknown_name_lists_the_names_and_suggests_one():
    with pytest.raises(ConfigError, match=r"unknown FADeR variant 'pseudo_focussed'; did you mean 'pseudo_focused'\?"):
        get_variant("pseudo_focussed")
    with pytest.raises(ConfigError, match=r"installed: paper, vit, .*procedural_focused, .*fader-kit variants --all"):
        resolve(FaderConfig(), "zzz")


def test_a_table_column_can_be_named_by_its_head():
    from fader_kit_bench.tables import TABLES

    assert TABLES["table3"].variant("paper").name == "ours"
    assert TABLES["table2"].variant("ours").name == "fader"
    assert TABLES["fader_head"].variant("open_gates").name == "open_gates"
    with pytest.raises(ConfigError, match="table table3 has no variant 'neighbours'"):
        TABLES["table3"].variant("neighbours")


def test_one_configuration_model_with_strategy_names():
    """No experiment field of its own: what the head reads and how it gates are lists of strategy names."""
    assert not set(LEGACY_FIELDS) - {"head_input", "gates"} & set(FaderConfig.model_fields)
    assert FaderConfig().head_input == ("pixels",) and FaderConfig().gates == ("head",)
    assert FaderConfig(gates=["open"]).gates == ("open",)
    import fader_kit.model.config as config_module

    assert not hasattr(config_module, "HeadExperiment") and not hasattr(config_module, "ExperimentalFaderConfig")


def test_fader_config_from_an_old_dump_is_the_same_head():
    """A dump from before the strategies (the old fields at their defaults, or an experiment's) loads as
    the head it described."""
    assert fader_config(dict(OLD_DEFAULTS)) == FaderConfig()
    cfg = fader_config({**OLD_DEFAULTS, "context": "neighbours"})
    assert cfg.head_input == ("neighbours",) and cfg.gates == ("head",)
    cfg = fader_config({**OLD_DEFAULTS, "head_input": "stats", "score_input": True, "gates": "score",
                        "normaliser": "calibrated", "gate_end": "threshold", "masked_gate": "one"})
    assert cfg.head_input == ("stats", "score") and cfg.gates == ("score", "threshold_end", "masked_one")
    with pytest.raises(ValueError, match="masked_gate"):
        fader_config({**OLD_DEFAULTS, "masked_gate": "zero"})


# -- the same numbers -----------------------------------------------------------------------------
# Bit-for-bit comparisons before / after a change live in ``python -m fader_kit_bench.fingerprints``
# (recorded and compared on one machine); bits recorded on one CPU are no test on another.
def test_same_seed_same_numbers_and_the_variants_differ():
    from fader_kit_bench.fingerprints import tiny_training

    torch.set_num_threads(1)
    paper = tiny_training("paper")
    assert tiny_training("paper") == paper  # same process, same kernels: identical
    focused = tiny_training("pseudo_focused")
    assert len(paper) == len(focused) == 6
    assert all(map(math.isfinite, paper + focused))
    assert focused[1] == 192.0  # pseudo_focused keeps every gate open at eval: 3 images x 64 patches
    assert paper[1] < 192.0  # the paper's gates close somewhere
    assert paper[0] != focused[0]


def test_fingerprint_compare_names_the_variant_that_moved():
    from fader_kit_bench.fingerprints import differences

    before = {"paper": [1.0, 2.0, 3.0], "open_gates": [4.0, 5.0, 6.0]}
    assert differences(before, {k: list(v) for k, v in before.items()}) == []
    after = {"paper": [1.0, 2.0, 3.0 * (1 + 1e-7)], "open_gates": [4.0, 5.0, 6.0]}
    assert differences(before, after) == ["paper: largest relative difference 1e-07"]
    assert differences(before, after, rtol=1e-6) == []
    assert differences(before, {"paper": [1.0]}) == [
        "open_gates: missing or of another length after the change",
        "paper: missing or of another length after the change"]


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["open_gates", "neighbours", "procedural", "pseudo_focused"])
def test_checkpoint_round_trips_experimental_variants(tmp_path, name):
    prof = get_profile("smoke")
    cfg = resolve(prof.fader_head, name)
    model = seeded_init(lambda: wrap_with_fader(EARUNet(prof.unet), None, cfg), 0).eval()
    if model.calibration is not None:
        model.calibration.copy_(torch.tensor([0.0, 1.0]))
    json.dumps(model.checkpoint()["fader_config"])  # JSON-able: loads with weights_only=True
    loaded = FaderModel.load(model.save(tmp_path / "m.pt"))
    assert loaded.config == cfg
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mb = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded(x, mb).reconstruction, model(x, mb).reconstruction)


# -- key payloads ---------------------------------------------------------------------------------
#: (config, field, other value): the field is read by that config, so changing it changes the payload
RELEVANT = [
    (FaderConfig(), "hidden", 64), (FaderConfig(), "patch_size", 4), (FaderConfig(), "margin", 0.1),
    (FaderConfig(), "activation", "gelu"), (FaderConfig(), "theta", "bilinear"), (FaderConfig(), "target", "ungated"),
    (FaderConfig(), "focus", "unmasked"), (FaderConfig(), "pseudo_anomalies", 0.5), (FaderConfig(), "head", "vit"),
    (FaderConfig(), "masking", "hard"), (FaderConfig(), "normaliser", "sigmoid"),
    (FaderConfig(head="vit"), "vit_dim", 128), (FaderConfig(head="vit"), "vit_depth", 3),
    (FaderConfig(head="vit"), "vit_heads", 8), (FaderConfig(masking="hard"), "hard_threshold", 0.3),
    (FaderConfig(normaliser="calibrated"), "calibration_quantile", 0.99),
    (FaderConfig(normaliser="calibrated"), "calibration_width", 3.0),
    (FaderConfig(), "gates", ("open",)), (FaderConfig(), "head_input", ("encoder",)),
    (FaderConfig(pseudo_anomalies=1.0), "pseudo_area", 0.1),
    (FaderConfig(pseudo_anomalies=1.0), "pseudo_source", "procedural"),
]
#: (config, field, other value): the field is never read by that config
IRRELEVANT = [
    (FaderConfig(), "vit_dim", 128), (FaderConfig(), "vit_depth", 3), (FaderConfig(), "vit_heads", 8),
    (FaderConfig(head="vit"), "hidden", 64), (FaderConfig(), "hard_threshold", 0.3),
    (FaderConfig(), "calibration_quantile", 0.99), (FaderConfig(), "calibration_width", 3.0),
    (FaderConfig(), "pseudo_area", 0.1), (FaderConfig(), "pseudo_source", "procedural"),
]


@pytest.mark.parametrize("config,field,value", RELEVANT, ids=[f"{c.head}-{c.masking}-{f}" for c, f, _ in RELEVANT])
def test_fader_key_payload_holds_what_changes_the_head(config, field, value):
    assert config.model_copy(update={field: value}).key_payload() != config.key_payload()


@pytest.mark.parametrize("config,field,value", IRRELEVANT, ids=[f"{c.head}-{f}" for c, f, _ in IRRELEVANT])
def test_fader_key_payload_leaves_out_what_is_never_read(config, field, value):
    assert config.model_copy(update={field: value}).key_payload() == config.key_payload()


def test_fader_key_payload_covers_every_field_and_ignores_the_spelling():
    assert {f for _, f, _ in RELEVANT} == set(FaderConfig.model_fields)
    base = get_profile("cpu").fader_head
    for name in variant_names(aliases=False):  # the old flat spelling and the strategy names give one payload
        cfg = resolve(base, name)
        assert fader_config(effective(cfg)).key_payload() == cfg.key_payload()
        json.dumps(cfg.key_payload())


def _lrs(config, steps_per_epoch: int = 3) -> list[float]:
    from fader_kit.model.training import make_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    sched = make_scheduler(opt, config, steps_per_epoch)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


SCHEDULE_FIELDS = {"warmup_epochs": 3, "sgdr_period": 2, "final_lr_factor": 0.3}


@pytest.mark.parametrize("schedule", ["fixed", "warmup", "sgdr", "cosine"])
def test_train_key_payload_holds_exactly_the_fields_its_schedule_reads(schedule):
    from fader_kit.model.config import TrainConfig

    base = TrainConfig(epochs=6, schedule=schedule, warmup_epochs=1, sgdr_period=1)
    for field, value in SCHEDULE_FIELDS.items():
        other = base.model_copy(update={field: value})
        for role in ("ear", "fader"):
            in_key = other.key_payload(role) != base.key_payload(role)
            assert in_key == (_lrs(other) != _lrs(base)), (schedule, field, role)  # the key follows the lr


def test_train_key_payload_by_role():
    from fader_kit.model.config import TrainConfig

    base = TrainConfig()
    for field, value in (("ranking_pairs", 8), ("decoder_lr_factor", 0.5)):
        other = base.model_copy(update={field: value})
        assert other.key_payload("ear") == base.key_payload("ear")  # EAR training never reads them
        assert other.key_payload("fader") != base.key_payload("fader")
    for field, value in (("epochs", 3), ("batch_size", 4), ("lr", 0.1), ("recalibrate_bn", False),
                         ("random_blobs", False), ("blob_coverage", 0.3), ("schedule", "cosine")):
        other = base.model_copy(update={field: value})
        assert all(other.key_payload(r) != base.key_payload(r) for r in ("ear", "fader")), field
    no_blobs = TrainConfig(random_blobs=False)
    assert no_blobs.model_copy(update={"blob_coverage": 0.3}).key_payload("ear") == no_blobs.key_payload("ear")
    with pytest.raises(ConfigError, match="unknown training role"):
        base.key_payload("masker")  # type: ignore[arg-type]


def test_unet_key_payload_keeps_channels_last():
    """NHWC rounds differently: not bit-identical, so it is part of the U-Net's key."""
    from fader_kit.model.config import UNetConfig

    assert UNetConfig(channels_last=False).key_payload() != UNetConfig().key_payload()


# -- what a results row prints --------------------------------------------------------------------
def test_labels_and_the_evaluate_argument():
    from fader_kit.cli.main import build_parser

    assert get_variant("paper").label == "FADeR (paper)"
    assert get_variant("fader").label == "FADeR (paper)"
    assert get_variant(DEFAULT_HEAD_VARIANT).label == "FADeR (pseudo_focused)"
    parser = build_parser()
    for alias, name in (("ours", "paper"), ("fader", "paper"), ("vit", "vit"), ("open_gates", "open_gates")):
        assert parser.parse_args(["evaluate", "--category", "x", "--fader-variant", alias]).fader_variant == name


def test_evaluate_table_names_the_head(capsys):
    from fader_kit.cli.main import print_evaluation

    cell = SimpleNamespace(text=lambda: "0.900 ± 0.010")
    spread = {k: {"image_auroc": cell, "pixel_auroc": cell} for k in ("ear", "fader", "fader_fused")}
    comparison = SimpleNamespace(text=lambda: "image +0.010 [-0.01, +0.03]")
    result = SimpleNamespace(
        category="washer", masker=SimpleNamespace(name="patch_stats", weights="trained-here"), profile="smoke",
        seeds=[0], spread=spread, comparison={"image_auroc": comparison}, fused_comparison={}, per_seed=[],
        fader_variant="pseudo_focused",
    )
    print_evaluation(result)
    out = capsys.readouterr().out
    assert "\nFADeR (pseudo_focused) " in out and "FADeR (pseudo_focused) + masker" in out
    assert "FADeR (pseudo_focused) - EAR" in out
    result.fader_variant = "ours"
    print_evaluation(result)
    assert "FADeR (paper) " in capsys.readouterr().out


@pytest.mark.parametrize("name", ["neighbours", "open_gates"])
def test_experimental_variants_export_to_onnx(tmp_path, name):
    """The experiment travels with the config into the export's copy of the model."""
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnx", reason="needs the [export] extra")
    from fader_kit.model.onnx_export import export_model

    prof = get_profile("smoke")
    model = seeded_init(lambda: wrap_with_fader(EARUNet(prof.unet), None, resolve(prof.fader_head, name)), 0).eval()
    report = export_model(model, tmp_path / "m.onnx", prof.image_size)
    assert report.max_abs_diff_map is not None and report.max_abs_diff_map <= 1e-4


def test_profiles_keep_their_digests_when_later_head_fields_stay_at_default():
    """Rows store the profile's digest: fields added to the head configuration later (strategies,
    pseudo-anomaly area and source) enter it only when set, so every profile keeps the digest its
    earlier rows recorded; setting one changes it."""
    from fader_kit.model.config import FaderConfig, get_profile

    assert {n: get_profile(n).digest() for n in ("smoke", "cpu", "paper")} == {
        "smoke": "0e1e11d2b7ee7c22", "cpu": "909589b58f997470", "paper": "12df4dd868304b31"}
    assert "gates" not in FaderConfig().digest_payload()
    assert FaderConfig(gates=("open",)).digest() != FaderConfig().digest()
