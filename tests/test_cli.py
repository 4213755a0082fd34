"""The `fader-kit` command end to end on generated data (smoke profile), and its error paths."""
import json
import shutil

import pytest

from fader_kit.cli.main import main, parse_options
from fader_kit.data import generate_synthetic


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, smoke_ears):
    out = tmp_path_factory.mktemp("eval")
    smoke_ears(out)
    code = main(["evaluate", "--category", "washer", "--profile", "smoke", "--out", str(out), "--quiet", "--select"])
    return code, out


def test_evaluate_writes_metrics_for_ear_and_fader(evaluated, capsys):
    code, out = evaluated
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("ear", "fader"):
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max"):
            assert 0.0 <= metrics[model][key] <= 1.0
        # even at the smoke profile (2 epochs, 64 px) the eval-mode U-Net localises the synthetic
        # defects far above chance (measured 0.83 at one thread)
        assert metrics[model]["pixel_auroc"] > 0.75, (model, metrics[model])
    # patch_stats alone, the baseline every row carries, finds defective images above chance
    assert metrics["masker_alone"]["image_auroc"] > 0.6 and metrics["masker_alone"]["pixel_auroc"] > 0.85
    assert metrics["masker"]["name"] == "patch_stats" and metrics["profile"] == "smoke"
    assert (out / "fader.pt").is_file() and len(list((out / "cache" / "maskers").glob("patch_stats-*.pt"))) == 1
    assert len(list((out / "cache" / "ear").glob("ear-*.pt"))) == 1
    # --select: the four score kinds, chosen by their selection score, judged by their test AUROC
    sel = metrics["per_seed"][0]["selection"]
    cands = {c["name"]: c for c in sel["candidates"]}
    assert list(cands) == ["masker", "ear", "fader", "fused"]
    assert sel["chosen"] == max(cands, key=lambda k: cands[k]["selection_score"])
    assert "cutpaste" not in cands["ear"]["pseudo_auroc"] and set(cands["ear"]["pseudo_auroc"]) == {"blob", "deform", "scratch"}
    best = max(c["test_image_auroc"] for c in cands.values())
    assert abs(sel["regret"] - (best - cands[sel["chosen"]]["test_image_auroc"])) < 1e-12


def test_rerun_reuses_the_trained_ear_unet(evaluated, capsys):
    _, out = evaluated
    before = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", "--category", "washer", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    assert "2 units, 2 already finished, 0 to run" in capsys.readouterr().out  # nothing retrained, nothing rescored
    after = json.loads((out / "metrics.json").read_text())
    assert after["ear"] == before["ear"] and after["fader"] == before["fader"]
    assert after["fader_variant"] == "pseudo_focused" and after["threads"] >= 1


def test_unknown_masker_is_one_clear_error(tmp_path, capsys):
    code = main(["evaluate", "--category", "washer", "--masker", "nope", "--profile", "smoke", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown masker 'nope'" in err and "patch_stats" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "mvtec:/does/not/exist", "--category", "bottle"], "/does/not/exist"),
        (["--category", "no_such_category"], "no_such_category"),
        (["--category", "washer", "--profile", "huge"], "unknown profile 'huge'"),
        (["--category", "washer", "--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_name_the_culprit(tmp_path, capsys, args, needle):
    code = main(["evaluate", *args, "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_corrupt_image_names_the_file_and_leaves_no_metrics(tmp_path, capsys):
    root = tmp_path / "data"
    generate_synthetic(root, categories=["washer"], seed=0)
    victim = sorted((root / "washer" / "test").rglob("*.png"))[0]
    victim.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    code = main(["evaluate", "--data", f"mvtec:{root}", "--category", "washer", "--profile", "smoke", "--out", str(out), "--quiet"])
    assert code == 2
    assert victim.name in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_stale_metrics_are_removed_when_a_rerun_fails(evaluated, tmp_path, capsys):
    _, out = evaluated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["evaluate", "--category", "washer", "--masker", "nope", "--profile", "smoke", "--out", str(copy)]) == 2
    assert (copy / "metrics.json").exists()  # masker creation fails before anything is touched
    assert main(["evaluate", "--data", "mvtec:/nope", "--category", "washer", "--profile", "smoke", "--out", str(copy)]) == 2
    assert not (copy / "metrics.json").exists()  # a started-then-failed run leaves no stale result


def test_maskers_lists_builtin_with_weights_source(capsys):
    assert main(["maskers"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("patch_stats"))
    assert " none " in line


def test_parse_options():
    assert parse_options(["a=1", "b=true", "c=x", "d=[1,2]"]) == {"a": 1, "b": True, "c": "x", "d": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["novalue"])


def test_a_results_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("not a folder")
    code = main(["evaluate", "--category", "washer", "--profile", "smoke", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: results folder") and str(out) in err[0]


def test_a_test_set_without_normal_images_fails_before_training(tmp_path, capsys):
    root = tmp_path / "data"
    generate_synthetic(root, categories=["washer"], seed=0)
    shutil.rmtree(root / "washer" / "test" / "good")
    code = main(["evaluate", "--data", f"mvtec:{root}", "--category", "washer", "--profile", "smoke",
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no normal images" in err and "Traceback" not in err
    assert not list((tmp_path / "out" / "cache").rglob("ear-*.pt"))  # failed before any training


def test_an_internal_bug_shows_its_traceback_and_exits_1(monkeypatch, tmp_path, capsys):
    import fader_kit.engine.evaluate as evaluate_module

    def broken(*a, **k):
        raise ValueError("an internal inconsistency")  # a ValueError is not the user's mistake by itself

    monkeypatch.setattr(evaluate_module, "evaluate_category", broken)
    code = main(["evaluate", "--category", "washer", "--profile", "smoke", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "ValueError: an internal inconsistency" in err
    assert "this is a bug in fader-kit" in err.splitlines()[-1]
