"""``fader-kit export --onnx``: one ONNX graph that matches the torch model (onnxruntime vs
``FaderModel.anomaly_map`` / ``score``, max abs difference <= 1e-4), the mask as a real input,
the deployment page's pure-onnxruntime snippet, and one clear error without the [export] extra."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fader_kit import EARUNet, FaderConfig, FaderModel, get_profile, wrap_with_fader
from fader_kit.cli.main import main

ort = pytest.importorskip("onnxruntime", reason="needs the [export] extra")
pytest.importorskip("onnx", reason="needs the [export] extra")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the smoke profile's image side


def smoke_model(head: FaderConfig | None = None, seed: int = 0) -> FaderModel:
    """A smoke-sized FaderModel with non-trivial weights and BatchNorm statistics (as if trained),
    so that maps vary over the image and rounding differences would show."""
    torch.manual_seed(seed)
    prof = get_profile("smoke")
    model = wrap_with_fader(EARUNet(prof.unet), None, head or prof.fader_head)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, SIZE, SIZE, generator=g)
    mask = torch.zeros(batch, 1, SIZE, SIZE, dtype=torch.bool)
    mask[:, :, 16:40, 8:32] = True
    return images, mask


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """What ``fader-kit evaluate --profile smoke`` leaves: fader.pt and metrics.json."""
    run = tmp_path_factory.mktemp("run")
    smoke_model().save(run / "fader.pt")
    (run / "metrics.json").write_text(json.dumps({"profile": "smoke"}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fader.onnx"
    assert main(["export", "--onnx", str(out), str(run_dir)]) == 0
    return out


def test_onnxruntime_matches_torch_on_the_anomaly_map_and_score(run_dir, exported, capsys):
    model = FaderModel.load(run_dir / "fader.pt")
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "binary_mask"]
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score"]
    assert session.get_modelmeta().custom_metadata_map["image_size"] == str(SIZE)
    for batch in (1, 4):  # the batch axis is dynamic
        images, mask = inputs(batch, seed=batch)
        got_map, got_score = session.run(None, {"images": images.numpy(), "binary_mask": mask.numpy()})
        ref_map, ref_score = model.anomaly_map(images, mask), model.score(images, mask)
        assert got_map.shape == (batch, 1, SIZE, SIZE) and got_score.shape == (batch,)
        assert float(ref_map.std()) > 1e-3  # a map that varies, not a constant
        assert np.abs(got_map - ref_map.numpy()).max() <= 1e-4
        assert np.abs(got_score - ref_score.numpy()).max() <= 1e-4
    # the mask is an input of the graph: another mask gives another map, as in torch
    images, mask = inputs(2, seed=9)
    other = session.run(None, {"images": images.numpy(), "binary_mask": np.zeros_like(mask.numpy())})[0]
    masked = session.run(None, {"images": images.numpy(), "binary_mask": mask.numpy()})[0]
    assert np.abs(other - masked).max() > 1e-3
    assert np.abs(other - model.anomaly_map(images, torch.zeros_like(mask)).numpy()).max() <= 1e-4


@pytest.mark.parametrize("head", [
    FaderConfig(patch_size=8, head="vit", vit_dim=32, vit_heads=2, vit_depth=1),
    FaderConfig(patch_size=8, hidden=16, theta="bilinear", masking="hard"),
])
def test_ablation_heads_and_gates_export_too(tmp_path, head):
    from fader_kit.model.onnx_export import export_model

    model = smoke_model(head, seed=1)
    report = export_model(model, tmp_path / "m.onnx", SIZE)
    assert report.max_abs_diff_map is not None and report.max_abs_diff_map <= 1e-4


def test_calibrated_gates_export_with_their_calibration(tmp_path):
    """The default head of `fader-kit evaluate` (pseudo_focused) uses the calibrated normaliser: its
    levels are a buffer of the model and must reach the graph (else every gate is NaN)."""
    from fader_kit.model.variants import resolve as fader_variant
    from fader_kit.model.onnx_export import export_model

    model = smoke_model(fader_variant(get_profile("smoke").fader_head, "pseudo_focused"), seed=2)
    images, mask = inputs(2, 3)
    with torch.no_grad():
        levels = model.predict_errors(images).flatten().quantile(torch.tensor([0.5, 0.9]))
    model.calibration.copy_(levels)  # gates close on the top tenth of these patches
    _, gates = model.head_outputs(images, mask)
    assert float(gates.min()) < 0.5 < float(gates.max())
    report = export_model(model, tmp_path / "m.onnx", SIZE)
    assert report.max_abs_diff_map is not None and report.max_abs_diff_map <= 1e-4


def test_plain_ear_export_and_missing_size(run_dir, tmp_path, capsys):
    out = tmp_path / "ear.onnx"
    assert main(["export", "--onnx", str(out), "--no-head", str(run_dir / "fader.pt"), "--size", "64"]) == 0
    assert "EAR (no FADeR head)" in capsys.readouterr().out
    assert main(["export", "--onnx", str(out), str(run_dir / "fader.pt")]) == 2  # a bare checkpoint has no size
    assert "pass --size" in capsys.readouterr().err


def test_without_the_extra_the_command_fails_with_one_line(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    assert main(["export", "--onnx", str(tmp_path / "x.onnx"), str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: ONNX export needs the optional [export] extra (onnx is not installed): "
                   "pip install 'fader-kit[export]'"]


def test_readme_snippet_runs_with_onnxruntime_alone(run_dir, exported, tmp_path):
    """The deployment page's ONNX snippet, run in a fresh interpreter that cannot import fader_kit."""
    from PIL import Image

    text = (ROOT / "docs" / "deployment.md").read_text()
    code = re.search(r"<!-- onnx-snippet -->\s*```python\n(.*?)```", text, re.S).group(1)
    images, _ = inputs(1, seed=3)
    pixels = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "part.png")
    (tmp_path / "fader.onnx").write_bytes(exported.read_bytes())
    guard = "import sys; sys.modules['fader_kit'] = None\n"  # any import of fader_kit would fail
    out = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    score = float(out.stdout.split()[-1])
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "part.png"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    ref = FaderModel.load(run_dir / "fader.pt").score(x, torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool))
    assert abs(score - float(ref[0])) <= 1e-4
