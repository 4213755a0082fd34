"""``python -m fader_kit_bench bench ...`` / ``python -m fader_kit_bench report DIR``: the same commands as
``fader-kit bench`` and ``fader-kit report`` (one parser, one error handling)."""
from __future__ import annotations

import sys

from fader_kit.cli.main import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] not in ("bench", "report", "-h", "--help", "--version"):
        argv = ["bench", *argv]  # `python -m fader_kit_bench table3 ...` reads as `bench table3 ...`
    raise SystemExit(main(argv))
