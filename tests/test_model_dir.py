"""A detector folder that no file can steer: fixed file names, a digest on every file, every field
validated before a tensor is built, bounded reads -- and one clear ``ModelDirError`` for anything else.

One tiny detector is fitted per module; each test copies the folder and damages the copy.  ``reseal``
recomputes the digests after a change, which is what someone editing a folder on purpose would do: it
shows that the field checks hold on their own, not only the digests.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fader_kit.cli.main import main
from fader_kit.deploy.detector import Detector
from fader_kit.errors import ModelDirError, UserError
from fader_kit.deploy.fit import fit_detector
from fader_kit.deploy.modeldir import FILES, manifest_digest
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT
from deploy_cases import TINY, part, write_parts

JSON_FILES = ("detector.json", "calibration.json", "masker.json")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_dir")
    rng = np.random.default_rng(1)
    write_parts(root / "normal", 10, seed=1)
    Image.fromarray(part(rng, defect=True)).save(root / "defect.png")
    fit_detector(root / "normal", masker="patch_stats", profile=TINY, out=root / "model", seed=0,
                 head_variant=DEFAULT_HEAD_VARIANT,
                 false_alarm_rate=0.2, log=lambda _: None)
    return root / "model"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the test run) when the block runs longer than ``seconds``."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target, symlinks=True)
    return target


def edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def reseal(folder: Path) -> None:
    """Recompute every digest of ``folder`` (what a deliberate edit would do)."""
    manifest = json.loads((folder / "detector.json").read_text())
    version = manifest.get("format_version")
    names = FILES if isinstance(version, int) and version >= 2 else ("model.safetensors", "masker.safetensors")
    sums = {}
    for name in names:
        if name != "detector.json" and (folder / name).is_file():
            sums[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    manifest["sha256"] = sums
    if "detector.json" in names:
        manifest["sha256"]["detector.json"] = manifest_digest(manifest)
    (folder / "detector.json").write_text(json.dumps(manifest))


def load_error(folder: Path, seconds: float = 5.0) -> str:
    with deadline(seconds), pytest.raises(ModelDirError) as info:
        Detector.load(folder)
    return str(info.value)


# -- the digests ----------------------------------------------------------------------------------
def test_every_file_is_listed_by_a_fixed_name(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "detector.json").read_text())
    assert set(manifest["sha256"]) == set(FILES)
    assert manifest["sha256"]["detector.json"] == manifest_digest(manifest)
    Detector.load(model_dir)  # what fit wrote loads


def test_empty_digests_are_refused(model_dir: Path, tmp_path: Path) -> None:
    folder = copy(model_dir, tmp_path / "m")
    edit_json(folder / "detector.json", lambda d: d.update(sha256={}))
    assert "lists no digest for" in load_error(folder)


def test_a_digest_name_is_never_joined_to_a_path(model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy(model_dir, tmp_path / "m")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    evil = os.path.relpath(outside, folder)  # ../secret.txt
    edit_json(folder / "detector.json",
              lambda d: d["sha256"].update({evil: hashlib.sha256(b"secret").hexdigest()}))
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    message = load_error(folder)
    assert "../secret.txt" in message and "not a file of a detector folder" in message
    assert not any("secret" in p for p in opened)
    for name in ("/etc/hostname", "../../etc/hostname", "/dev/zero"):
        bad = copy(model_dir, tmp_path / f"m{len(name)}")
        edit_json(bad / "detector.json", lambda d, name=name: d["sha256"].update({name: "0" * 64}))
        assert name in load_error(bad)


@pytest.mark.parametrize("name", ["calibration.json", "masker.json", "README.md", "detector.json"])
def test_every_file_is_covered_by_its_digest(model_dir: Path, tmp_path: Path, name: str) -> None:
    folder = copy(model_dir, tmp_path / "m")
    if name.endswith(".json"):
        edit_json(folder / name, lambda d: d.update(extra_field_added_by_hand=1))
    else:
        with open(folder / name, "a") as fh:
            fh.write("edited\n")
    message = load_error(folder)
    assert name in message and "changed" in message


def test_a_missing_digest_entry_is_refused(model_dir: Path, tmp_path: Path) -> None:
    folder = copy(model_dir, tmp_path / "m")
    edit_json(folder / "detector.json", lambda d: d["sha256"].pop("calibration.json"))
    assert "calibration.json" in load_error(folder)


def make_unreadable(target: Path, how: str) -> None:
    """Replace the file ``target`` by something a loader must refuse without reading it through."""
    target.unlink()
    if how == "dev_zero":
        target.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "folder":
        target.mkdir()
    else:  # sparse: 8 GiB or more on paper, no disk used
        with open(target, "wb") as fh:
            fh.truncate(8 << 30)


@pytest.mark.parametrize("how", ["dev_zero", "fifo", "folder", "huge"])
def test_a_file_that_is_not_a_plain_bounded_file_is_refused_at_once(model_dir: Path, tmp_path: Path,
                                                                     how: str) -> None:
    folder = copy(model_dir, tmp_path / "m")
    target = folder / "model.safetensors"
    make_unreadable(target, how)
    t0 = time.perf_counter()
    message = load_error(folder)
    assert "model.safetensors" in message and time.perf_counter() - t0 < 1.0


def test_an_extra_file_in_the_folder_is_refused(model_dir: Path, tmp_path: Path) -> None:
    folder = copy(model_dir, tmp_path / "m")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden files are a copying tool's, not the detector's
    Detector.load(folder)
    (folder / "weights.pt").write_bytes(b"\0")
    assert "weights.pt" in load_error(folder)


def test_a_folder_of_format_version_one_still_loads(model_dir: Path, tmp_path: Path) -> None:
    """Folders written before every file was digested list the two tensor files only."""
    folder = copy(model_dir, tmp_path / "m")
    manifest = json.loads((folder / "detector.json").read_text())
    manifest["format_version"] = 1
    manifest["sha256"] = {k: v for k, v in manifest["sha256"].items() if k.endswith(".safetensors")}
    (folder / "detector.json").write_text(json.dumps(manifest))
    old = Detector.load(folder)
    new = Detector.load(model_dir)
    image = str(model_dir.parent / "defect.png")
    assert old.predict(image)[0].score == new.predict(image)[0].score
    edit_json(folder / "detector.json", lambda d: d["sha256"].pop("masker.safetensors"))
    assert "masker.safetensors" in load_error(folder)


# -- the fields -------------------------------------------------------------------------------------
@pytest.mark.parametrize("file, change, named", [
    ("calibration.json", lambda d: d.update(image_threshold=float("nan")), "image_threshold"),
    ("calibration.json", lambda d: d.update(image_threshold=1e999), "image_threshold"),
    ("calibration.json", lambda d: d.update(normal_scores=[], n_images=0), "normal_scores"),
    ("calibration.json", lambda d: d["pixel_quantiles"].update(rates=[], values=[]), "pixel_quantiles"),
    ("calibration.json", lambda d: d.update(false_alarm_rate=1.5), "false_alarm_rate"),
    ("calibration.json", lambda d: d.update(n_images="5"), "n_images"),
    ("detector.json", lambda d: d["settings"].update(image_size=1_000_000), "image_size"),
    ("detector.json", lambda d: d["settings"].update(image_size=True), "image_size"),
    ("detector.json", lambda d: d["settings"]["unet_config"].update(widths=[4, 1 << 20]), "widths"),
    ("detector.json", lambda d: d["settings"]["fader_config"].update(hidden=10**9), "hidden"),
    ("detector.json", lambda d: d["settings"].update(kernel_size=10**6), "kernel_size"),
    ("detector.json", lambda d: d["settings"].update(batch_size=0), "batch_size"),
    ("detector.json", lambda d: d["settings"].update(masker="../../evil"), "masker"),
    ("masker.json", lambda d: d["state"].update(threshold={"__float__": "nan"}), "threshold"),
    ("masker.json", lambda d: d["state"].update(threshold="high"), "threshold"),
    ("masker.json", lambda d: d["state"].update(grid=[3, 3]), "grid"),
    ("masker.json", lambda d: d.update(masker="attention"), "masker"),
])
def test_a_bad_field_is_refused_even_with_fresh_digests(model_dir: Path, tmp_path: Path, file: str, change: Any,
                                                        named: str) -> None:
    folder = copy(model_dir, tmp_path / "m")
    edit_json(folder / file, change)
    reseal(folder)
    message = load_error(folder)
    assert file in message and named in message


def test_masker_tensors_of_the_wrong_shape_or_dtype_are_refused(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for label, change in [("shape", lambda t: t[:-1]), ("dtype", lambda t: t.double())]:
        folder = copy(model_dir, tmp_path / label)
        tensors = load_file(str(folder / "masker.safetensors"))
        key = next(k for k in tensors if k.endswith("precision"))
        tensors[key] = change(tensors[key]).contiguous()
        save_file(tensors, str(folder / "masker.safetensors"))
        reseal(folder)
        message = load_error(folder)
        assert "masker" in message and "precision" in message and label in message


def test_model_tensors_must_match_the_settings_before_they_are_used(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy(model_dir, tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.dim() > 1)  # flattening changes its shape
    tensors[key] = tensors[key].flatten()
    save_file(tensors, str(folder / "model.safetensors"))
    reseal(folder)
    assert key in load_error(folder)
    nan = copy(model_dir, tmp_path / "nan")
    tensors = load_file(str(nan / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key][0] = float("nan")
    save_file(tensors, str(nan / "model.safetensors"))
    reseal(nan)
    message = load_error(nan)
    assert key in message and "finite" in message


# -- the command line: one line, exit 2, within 5 s ----------------------------------------------
def _evil(model_dir: Path, folder: Path, how: str) -> None:
    if how == "empty_digests":
        edit_json(folder / "detector.json", lambda d: d.update(sha256={}))
    elif how == "etc_hostname":
        edit_json(folder / "detector.json", lambda d: d["sha256"].update({"../../etc/hostname": "0" * 64}))
    elif how == "dev_zero":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").symlink_to("/dev/zero")
    elif how == "nan_threshold":
        edit_json(folder / "calibration.json", lambda d: d.update(image_threshold=float("nan")))
        reseal(folder)
    elif how == "image_size":
        edit_json(folder / "detector.json", lambda d: d["settings"].update(image_size=1_000_000))
        reseal(folder)


@pytest.mark.parametrize("how", ["empty_digests", "etc_hostname", "dev_zero", "nan_threshold", "image_size"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_cli_refuses_a_tampered_folder_in_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   how: str, command: str) -> None:
    if command == "export":
        pytest.importorskip("onnxruntime")
    folder = copy(model_dir, tmp_path / "m")
    _evil(model_dir, folder, how)
    args = (["predict", str(folder), str(model_dir.parent / "defect.png"), "--out", str(tmp_path / "out"), "--quiet"]
            if command == "predict" else ["export", "--onnx", str(tmp_path / "x.onnx"), str(folder)])
    t0 = time.perf_counter()
    with deadline(5.0):
        rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and str(folder) in err[0], err
    assert time.perf_counter() - t0 < 5.0
    assert not (tmp_path / "out" / "predictions.csv").exists() and not (tmp_path / "x.onnx").exists()


# -- property: any damage is one clear error, never a crash -----------------------------------------
def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += _json_paths(v, (*prefix, i))
    return out


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1 << 31, 1 << 62, 10**6, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["../../etc/hostname", "/dev/zero", "nan", "patch_stats", "model.safetensors"]),
    st.lists(st.integers(min_value=-5, max_value=10**7), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                                   max_size=2),
)


@st.composite
def damage(draw: st.DrawFn, model_dir: Path) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["field", "field", "field", "digest", "truncate", "remove", "extra", "special"]))
    if kind == "field":
        name = draw(st.sampled_from(JSON_FILES))
        paths = _json_paths(json.loads((model_dir / name).read_text()))
        return kind, (name, draw(st.sampled_from(paths)), draw(VALUES), draw(st.booleans()))
    if kind == "digest":
        return kind, (draw(st.sampled_from(["drop", "add", "change"])), draw(st.sampled_from(FILES)),
                      draw(st.sampled_from(["../x", "/etc/hostname", "/dev/zero", "extra.bin", "", "a" * 300])))
    if kind == "truncate":
        return kind, (draw(st.sampled_from(FILES)), draw(st.floats(min_value=0, max_value=0.999)), draw(st.booleans()))
    if kind == "remove":
        return kind, draw(st.sampled_from(FILES))
    if kind == "extra":
        return kind, draw(st.sampled_from(["notes.txt", "model.onnx", "sub"]))
    return kind, (draw(st.sampled_from(FILES)), draw(st.sampled_from(["dev_zero", "fifo", "folder", "sparse"])))


def apply(folder: Path, kind: str, what: Any) -> None:
    if kind == "field":
        name, path, value, sealed = what
        data = json.loads((folder / name).read_text())
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (folder / name).write_text(json.dumps(data))
        # a manifest holding NaN / infinity has no canonical digest: it stays unsealed (refused either way)
        if sealed and not (name == "detector.json" and isinstance(value, float) and not math.isfinite(value)):
            reseal(folder)
    elif kind == "digest":
        action, name, evil = what
        def change(d: dict) -> None:
            if action == "drop":
                d["sha256"].pop(name, None)
            elif action == "add":
                d["sha256"][evil] = "0" * 64
            else:
                d["sha256"][name] = "f" * 64
        edit_json(folder / "detector.json", change)
    elif kind == "truncate":
        name, share, sealed = what
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * share)])
        if sealed and name != "detector.json":
            reseal(folder)
    elif kind == "remove":
        (folder / what).unlink()
    elif kind == "extra":
        (folder / what).mkdir() if what == "sub" else (folder / what).write_bytes(b"x")
    else:
        name, how = what
        make_unreadable(folder / name, how)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_is_one_clear_error_within_a_second(model_dir: Path, data: st.DataObject) -> None:
    kind, what = data.draw(damage(model_dir))
    with tempfile.TemporaryDirectory() as tmp:
        folder = copy(model_dir, Path(tmp) / "m")
        apply(folder, kind, what)
        t0 = time.perf_counter()
        try:
            with deadline(10.0):
                Detector.load(folder)
        except UserError as exc:
            message = str(exc)
            assert str(folder) in message and "\n" not in message.strip(), message
        # anything else (a loaded detector is fine where the change kept the folder valid) fails the test
        assert time.perf_counter() - t0 < 1.0, (kind, what)
