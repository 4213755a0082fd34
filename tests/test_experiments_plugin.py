"""The head experiments are a plugin (``fader_kit_experiments``): found through the ``fader_kit`` entry
points like any third-party plugin, their variants resolve by name, and the core carries eight."""
from __future__ import annotations

import importlib.metadata
import json

import pytest

from fader_kit.model.config import FaderConfig, get_profile
from fader_kit.errors import ConfigError
from fader_kit.maskers.registry import MaskerRegistry, default_registry
from fader_kit.model.variants import core_heads, default_heads, get_variant, is_core, list_variants, resolve, variant_names

CORE = ["paper", "vit", "hard", "bilinear", "sigmoid", "open_gates", "pseudo_focused", "encoder_ear"]


def test_the_plugin_is_an_installed_entry_point():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="fader_kit")}
    assert eps["experiments"].value == "fader_kit_experiments.plugin"
    info = {p.name: p for p in default_registry().plugins()}["experiments"]
    assert info.status == "ok" and info.hooks == ("register_heads",) and not info.builtin


def test_core_has_eight_and_the_plugin_the_rest():
    assert variant_names(aliases=False, core=True) == CORE
    assert [v.name for v in list_variants(core=True)] == CORE
    every = variant_names(aliases=False)
    assert every[:8] == CORE and len(every) == 36
    heads = default_heads()
    assert {heads.origin[n] for n in every[8:]} == {"experiments"}
    assert is_core("ours") and not is_core("stats_ear")
    assert set(core_heads().inputs) == {"pixels", "encoder"} and set(core_heads().gates) == {"head", "open"}
    assert {"neighbours", "stats", "backbone", "score"} <= set(heads.inputs)
    assert {"score", "threshold_end", "masked_one"} <= set(heads.gates)


def test_experiment_variants_resolve_to_their_strategies():
    base = get_profile("smoke").fader_head
    cfg = resolve(base, "score_gates_threshold_one")
    assert cfg.gates == ("score", "threshold_end", "masked_one") and cfg.normaliser == "calibrated"
    assert resolve(base, "stats_score_ear").head_input == ("stats", "score")
    assert get_variant("neighbours").kind == "experiment"


def test_the_core_needs_no_plugin(monkeypatch):
    """Without the plugin the core heads work, and an experiment's name says where to look."""
    import fader_kit.maskers.registry as registry
    import fader_kit.model.variants as variants

    monkeypatch.setattr(registry, "default_registry",
                        lambda: MaskerRegistry(env={"FADER_KIT_DISABLE_PLUGINS": "experiments"}))
    monkeypatch.setattr(variants, "_default", None)
    heads = variants.default_heads()
    assert [v.name for v in heads.list()] == CORE
    with pytest.raises(ConfigError, match=r"unknown FADeR variant 'stats_ear'.*fader-kit variants --all"):
        variants.get_variant("stats_ear")
    with pytest.raises(ConfigError, match="unknown head input 'stats'"):
        variants.head_strategies(FaderConfig(head_input=("stats",)))
    assert variants.resolve(FaderConfig(), "encoder_ear").head_input == ("encoder",)


#: FaderConfig.key_payload of the smoke profile's head per variant, as fader-kit wrote them before the head
#: became strategies: cache keys and stored rows depend on these exact dicts (CPU-independent)
PINNED = {
    "paper": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
              "normaliser": "minmax", "theta": "nearest", "target": "gated", "pseudo_anomalies": 0.0,
              "focus": "all", "hidden": 32, "context": "token", "gates": "head"},
    "open_gates": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
                   "normaliser": "minmax", "theta": "nearest", "target": "gated", "pseudo_anomalies": 0.0,
                   "focus": "all", "hidden": 32, "context": "token", "gates": "open"},
    "pseudo_focused": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
                       "normaliser": "calibrated", "theta": "nearest", "target": "ungated", "pseudo_anomalies": 1.0,
                       "focus": "unmasked", "hidden": 32, "calibration_quantile": 0.995, "calibration_width": 2.0,
                       "context": "token", "gates": "head", "pseudo_area": 0.04, "pseudo_source": "image"},
    "encoder_ear": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
                    "normaliser": "calibrated", "theta": "nearest", "target": "ear", "pseudo_anomalies": 0.0,
                    "focus": "unmasked", "hidden": 32, "calibration_quantile": 0.995, "calibration_width": 2.0,
                    "context": "token", "gates": "head", "head_input": "encoder"},
    "neighbours": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
                   "normaliser": "minmax", "theta": "nearest", "target": "gated", "pseudo_anomalies": 0.0,
                   "focus": "all", "hidden": 32, "context": "neighbours", "gates": "head"},
    "stats_score_ear": {"patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
                        "normaliser": "calibrated", "theta": "nearest", "target": "ear", "pseudo_anomalies": 0.0,
                        "focus": "unmasked", "hidden": 32, "calibration_quantile": 0.995, "calibration_width": 2.0,
                        "context": "token", "gates": "head", "head_input": "stats", "score_input": True},
    "score_gates_threshold_one": {
        "patch_size": 8, "activation": "relu", "head": "mlp", "margin": 0.01, "masking": "soft",
        "normaliser": "calibrated", "theta": "nearest", "target": "gated", "pseudo_anomalies": 0.0,
        "focus": "unmasked", "hidden": 32, "calibration_quantile": 0.995, "calibration_width": 2.0,
        "context": "token", "gates": "score", "masked_gate": "one", "gate_end": "threshold"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_key_payloads_are_byte_identical_to_the_old_ones(name):
    payload = resolve(get_profile("smoke").fader_head, name).key_payload()
    assert json.dumps(payload) == json.dumps(PINNED[name])  # the order too: a key hashes the text


def test_a_head_the_old_fields_cannot_spell_gets_a_key_of_its_own():
    old = FaderConfig(gates=("score", "masked_one", "threshold_end"), normaliser="calibrated").key_payload()
    assert old["gates"] == ["score", "masked_one", "threshold_end"] and "context" not in old


def test_the_variants_command_and_the_help_list_the_core(capsys):
    from fader_kit.cli.main import build_parser, main

    assert main(["variants"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line and not line.startswith("`")]
    assert rows == CORE
    assert main(["variants", "--all"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 37 and "stats_ear                  experiment  experiments" in out
    for command in ("evaluate", "fit"):
        action = next(a for a in build_parser(plugin_commands=False)._subparsers._group_actions[0].choices[command]._actions
                      if "--fader-variant" in a.option_strings)
        assert "encoder_ear" in action.help and "stats_ear" not in action.help and "variants --all" in action.help


def _old_dump(cfg: FaderConfig) -> dict:
    """``cfg`` written as fader-kit wrote heads before the strategies: the flat experiment fields."""
    from fader_kit.model.config_legacy import to_legacy

    old = to_legacy(cfg.head_input, cfg.gates)
    assert old is not None
    return {**{k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("head_input", "gates")}, **old}


@pytest.mark.parametrize("name", ["stats_score_ear", "score_gates_threshold_one", "neighbours"])
def test_a_checkpoint_with_the_old_flat_fields_loads_as_the_same_head(tmp_path, name):
    import torch

    from fader_kit.model.fader import FaderModel, wrap_with_fader
    from fader_kit.model.unet import EARUNet
    from fader_kit.util.files import torch_save_atomic

    prof = get_profile("smoke")
    cfg = resolve(prof.fader_head, name)
    torch.manual_seed(0)
    model = wrap_with_fader(EARUNet(prof.unet), None, cfg).eval()
    if model.calibration is not None:
        model.calibration.copy_(torch.tensor([0.2, 0.8]))
    ckpt = model.checkpoint()
    ckpt["fader_config"] = _old_dump(cfg)
    assert "context" in ckpt["fader_config"] and isinstance(ckpt["fader_config"]["gates"], str)
    loaded = FaderModel.load(torch_save_atomic(ckpt, tmp_path / "old.pt"))
    assert loaded.config == cfg
    g = torch.Generator().manual_seed(1)
    x, scores = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    mb = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    mb[:, :, :8, :8] = True
    with torch.no_grad():
        kw = {"scores": scores} if model.needs_scores else {}
        assert torch.equal(loaded(x, mb, **kw).reconstruction, model(x, mb, **kw).reconstruction)


@pytest.mark.parametrize("name", ["pseudo_focused", "stats_score_ear", "score_gates_threshold_one"])
def test_a_detector_folder_head_validates_strictly_either_way(name):
    """A detector folder's head configuration (checked without type coercion) may be written with the old
    flat fields (folders of formats 1 to 3) or with the strategy names."""
    from fader_kit.deploy.detector import DetectorSettings
    from fader_kit.deploy.modeldir import canonical_json

    cfg = resolve(get_profile("smoke").fader_head, name)
    for dump in (_old_dump(cfg), cfg.model_dump(mode="json")):
        assert FaderConfig.model_validate_json(canonical_json(dump), strict=True) == cfg
        assert DetectorSettings._head(dump) == dump
    with pytest.raises(ValueError, match="patch_size"):
        DetectorSettings._head({**_old_dump(cfg), "patch_size": 8.0})


def test_the_core_model_file_names_no_experiment():
    """The FADeR model composes strategies: its file names no experiment variant and reads none of the
    old experiment switches (they are strategy names now, resolved by the registry)."""
    import re
    from pathlib import Path

    import fader_kit.model.fader as core
    from fader_kit.model.config_legacy import LEGACY_FIELDS
    from fader_kit_experiments.variants import VARIANTS

    text = Path(core.__file__).read_text()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    from typing import get_args

    from fader_kit.model.config import FaderConfig
    from fader_kit.model.gates import CORE_GATES
    from fader_kit.model.head_inputs import CORE_INPUTS

    # a core strategy's name or a core setting's value may equal an experiment's name ("encoder", "calibrated")
    core_words = {s.name for s in (*CORE_INPUTS, *CORE_GATES)} | {
        v for f in FaderConfig.model_fields.values() for v in get_args(f.annotation) if isinstance(v, str)}
    experiment_names = {v.name for v in VARIANTS} | {a for v in VARIANTS for a in v.aliases}
    experiment_names -= core_words
    assert "score_gates" in experiment_names and "stats_ear" in experiment_names
    switches = set(LEGACY_FIELDS) - {"head_input", "gates"}  # the two strategy lists are core fields
    assert words & experiment_names == set()
    assert {w for w in words if w in switches} == set()
