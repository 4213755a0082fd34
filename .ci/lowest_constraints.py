"""Print pip constraints that pin every dependency of pyproject.toml to its lower bound.

CI installs the project with these constraints in a second environment and runs the tests there,
so each ``>=`` bound in pyproject.toml is a version that was actually tested, not a guess.
Usage: ``python .ci/lowest_constraints.py [EXTRA ...] > lowest.txt``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)")


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """Map each requirement with a ``>=`` bound to that bound; other requirements are left free."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = BOUND.match(requirement.split(";")[0])
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def pinned(constraints: Path) -> set[str]:
    """Names that constraints.txt pins already (the torch pair on the build machine's disk)."""
    return {line.split("==")[0].strip().lower() for line in constraints.read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")}


def main(extras: list[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    skip = pinned(root / "constraints.txt")
    for name, version in sorted(lower_bounds(requirements).items()):
        if name.lower() not in skip:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv[1:])
