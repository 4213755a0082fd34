"""Run by CI in an environment where fader-kit was installed from its wheel, from a folder outside
the source tree: every module imports, and the user's main commands run end to end.

    python smoke_installed.py WORKDIR
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

#: Optional extras' top-level modules: a module that needs one may fail to import without it.
OPTIONAL = {"ray", "mkdocs"}


def import_everything() -> int:
    count = 0
    for top in ("fader_kit", "fader_kit_plugins", "fader_kit_bench", "fader_kit_experiments"):
        package = importlib.import_module(top)
        if "site-packages" not in (package.__file__ or ""):
            sys.exit(f"{top} was imported from {package.__file__}, not from the installed wheel")
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{top}."):
            if info.name.endswith(".__main__"):  # runs the command line when imported
                continue
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in OPTIONAL:
                    raise
            count += 1
    return count


def run(*args: str) -> None:
    print("+ fader-kit", " ".join(args), flush=True)
    subprocess.run(["fader-kit", *args], check=True)


def main(work: Path) -> None:
    print(f"imported {import_everything()} modules from the installed wheel", flush=True)
    run("--version")
    listed = subprocess.run(["fader-kit", "variants", "--all"], check=True, capture_output=True, text=True).stdout
    if " experiments " not in listed:  # the experiments plugin registers its head variants from the installed wheel
        sys.exit("fader-kit variants --all lists no variant of the experiments plugin")
    run("evaluate", "--profile", "smoke", "--category", "washer", "--out", str(work / "evaluate"), "--threads", "2")
    from fader_kit.data.synthetic import ensure_synthetic

    washer = ensure_synthetic("washer", image_size=64)
    run("fit", "--normal", str(washer / "train" / "good"), "--out", str(work / "detector"), "--profile", "smoke",
        "--threads", "2", "--quiet")
    run("predict", str(work / "detector"), str(washer / "test"), "--out", str(work / "predictions"), "--threads", "2",
        "--quiet")
    rows = (work / "predictions" / "predictions.csv").read_text().splitlines()
    tests = sum(1 for p in (washer / "test").rglob("*.png"))
    if len(rows) != tests + 1:
        sys.exit(f"predictions.csv has {len(rows) - 1} rows for {tests} test images")
    print(f"predict wrote one row for each of {tests} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
