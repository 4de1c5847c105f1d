"""Print the pack's runtime dependencies and its ``test`` dependency group, one per line.

Usage: python pack_requirements.py PYPROJECT_TOML

pyproject.toml is the single list of what the pack needs; the test environment installs
exactly that list instead of keeping a second copy.
"""
from __future__ import annotations

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the installer adds the backport first
    import tomli as tomllib


def requirements(pyproject_path: str) -> list[str]:
    with open(pyproject_path, "rb") as f:
        data = tomllib.load(f)
    return [*data["project"]["dependencies"], *data.get("dependency-groups", {}).get("test", [])]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1])))
