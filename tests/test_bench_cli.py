"""``fader-kit bench`` / ``python -m fader_kit_bench`` end to end (smoke profile, one category), and
``bench speed`` on tiny sizes."""
from __future__ import annotations

import importlib.util
import json
import runpy
import sys

import pytest

from fader_kit_bench.speed import SpeedConfig, count_parameters, flops_per_image, measure_masker, run_speed
from fader_kit.cli.main import main
from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.maskers.registry import MaskerRegistry
from fader_kit.maskers.weights import MissingWeightsError

import torch


def test_bench_table_runs_prints_the_table_and_resumes(tmp_path, capsys, smoke_ears):
    smoke_ears(tmp_path)
    argv = ["bench", "table3", "--profile", "smoke", "--categories", "washer", "--variants", "ear,ours",
            "--out", str(tmp_path), "--figures", "1", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "table3 on synthetic (smoke profile, 64px, device cpu, 1 thread, seed 0): 2 units, 0 already finished, 2 to run" in out
    assert "[1/2] patch_stats/ear on washer" in out and "[2/2] patch_stats/ours on washer" in out
    assert "| Category | EAR (hard, image) | paper | +MLP, soft, nearest (ours) | paper |" in out
    assert any(line.startswith("| washer | ") for line in out.splitlines())
    assert (tmp_path / "results.sqlite").is_file() and (tmp_path / "report.md").is_file()
    assert list((tmp_path / "figures" / "table3").rglob("patch_stats-ours-washer-seed0.png"))

    assert main(argv) == 0  # a rerun finds everything finished
    assert "2 units, 2 already finished, 0 to run" in capsys.readouterr().out


def test_python_m_benchmarks_uses_the_same_commands(tmp_path, monkeypatch, capsys):
    def run_module(*argv):
        monkeypatch.setattr(sys, "argv", ["fader_kit_bench", *argv])
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("fader_kit_bench", run_name="__main__", alter_sys=False)
        return exc.value.code

    assert run_module("report", str(tmp_path)) == 2
    assert "error: no benchmark results in" in capsys.readouterr().err
    assert run_module("table9") == 2  # read as `bench table9`
    assert "invalid choice: 'table9'" in capsys.readouterr().err


def test_bad_bench_arguments_are_one_clear_error(tmp_path, capsys):
    assert main(["bench", "table3", "--profile", "smoke", "--maskers", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown masker(s) nope" in err and "patch_stats" in err and "Traceback" not in err
    assert main(["bench", "table3", "--profile", "smoke", "--categories", "bottle", "--out", str(tmp_path)]) == 2
    assert "--categories: bottle not in synthetic" in capsys.readouterr().err


class _Broken:
    @hookimpl
    def register_maskers(self, register):
        def broken(**options):
            raise MissingWeightsError("no weights for broken_vit")
        register("broken", broken)


def test_speed_measures_models_and_maskers_and_records_failures(tmp_path):
    from fader_kit.maskers.registry import default_registry

    patch_stats = next(e for e in default_registry().list() if e.name == "patch_stats")

    class _PatchStats:
        @hookimpl
        def register_maskers(self, register):
            register("patch_stats", patch_stats.factory)

    reg = MaskerRegistry(entry_points=[], extra_plugins=[_PatchStats(), _Broken()])
    cfg = SpeedConfig(out=tmp_path, size=64, batches=(1, 2), repeats=1, warmup=0, model_profile="smoke", fit_images=4,
                      efficiency_profile="smoke")
    result = run_speed(cfg, registry=reg, log=lambda _m: None)
    (eff,) = result["efficiency"]
    assert eff["profile"] == "smoke" and eff["image_size"] == 64 and eff["matmul_gflops"] > 0
    # training = forward + backward (about 3x the forward's FLOPs) + the loss's convolutions
    assert 2.5 * eff["infer_gflop_per_image"] < eff["train_gflop_per_image"] < 4 * eff["infer_gflop_per_image"]
    assert eff["train_images_per_s"] > 0 and eff["train_gflops"] == pytest.approx(
        eff["train_images_per_s"] * eff["train_gflop_per_image"])
    recs = {r["model"]: r for r in result["records"]}
    recs = {(k.split(" ")[0] if r["kind"] in ("ear", "fader", "masker") else k): r for k, r in recs.items()}
    graph = ["EAR U-Net + MSGMS map [torch]", "EAR U-Net + MSGMS map [onnxruntime]",
             "FADeR_EAR + MSGMS map [torch]", "FADeR_EAR + MSGMS map [onnxruntime]"]
    assert set(recs) == {"EAR", "FADeR_EAR", "patch_stats", "broken", *graph}
    assert recs["broken"]["status"] == "failed" and "MissingWeightsError: no weights for broken_vit" in recs["broken"]["reason"]
    onnx_missing = importlib.util.find_spec("onnxruntime") is None
    for name in ("EAR", "FADeR_EAR", "patch_stats", *graph):
        r = recs[name]
        if onnx_missing and name.endswith("[onnxruntime]"):
            assert r["status"] == "failed" and "[export] extra" in r["reason"]
            continue
        assert r["status"] == "ok" and set(r["latency_ms"]) == {"1", "2"} and r["throughput"] > 0
    # FADeR = EAR + its head: more parameters and more FLOPs, in the same run
    assert recs["FADeR_EAR"]["parameters"] > recs["EAR"]["parameters"] > 0
    assert recs["FADeR_EAR"]["gflops_per_image"] > recs["EAR"]["gflops_per_image"] > 0
    assert set(result["fader_overhead"]["cpu"]) == {"1", "2"}
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert len(saved["records"]) == 8
    md = (tmp_path / "speed.md").read_text()
    assert "FADeR's overhead over EAR on cpu (same run, interleaved): batch 1:" in md
    assert "| cpu | broken | -- | failed: MissingWeightsError" in md
    assert "of measured float32 matmul" in md and "EAR training step" in md
    if not onnx_missing:
        assert set(result["fader_overhead_graph"]) == {"torch", "onnxruntime"}
        assert "FADeR's overhead over EAR with the MSGMS map on cpu, onnxruntime (interleaved with the other runtime): batch 1:" in md


def test_speed_fits_with_one_epoch_only_where_the_registration_says_so(tmp_path):
    from fader_kit.maskers.interfaces import Masker

    seen = []

    class Trained(Masker):
        def __init__(self, epochs=10):
            seen.append(epochs)
            self.threshold = 0.5

        def score_map(self, images):
            return images[:, :1]

    class ZeroShot(Trained):
        def __init__(self):
            seen.append("zero-shot")
            self.threshold = 0.5

    class _Plugin:
        @hookimpl
        def register_maskers(self, register):
            register("trained", Trained)
            register("zero_shot", ZeroShot)

    reg = MaskerRegistry(entry_points=[], extra_plugins=[_Plugin()])
    cfg = SpeedConfig(out=tmp_path, size=32, batches=(1,), repeats=1, warmup=0, fit_images=2)
    for name in ("trained", "zero_shot"):
        assert measure_masker(name, cfg, torch.device("cpu"), reg).status == "ok"
    assert seen == [1, "zero-shot"]


def test_flop_counter_and_parameter_count_by_hand():
    lin = torch.nn.Linear(10, 4)  # 44 parameters; a [1,10] x [10,4] matmul = 2*10*4 FLOPs
    assert count_parameters(lin) == 44
    assert flops_per_image(lambda x: lin(x), torch.zeros(1, 10)) == 80.0
