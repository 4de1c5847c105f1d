#!/usr/bin/env python3
"""Write the example workflows of workflows/ (UI format) and workflows/api/ (API format) from their
graph descriptions (scripts/workflow_builder/catalog.py).

    python scripts/build_workflows.py --url http://127.0.0.1:8188          # rewrite the files
    python scripts/build_workflows.py --url http://127.0.0.1:8188 --check  # exit 1 if they are stale

The server must run this pack (bash scripts/comfy_env.sh start): widget order and defaults are read
from its /object_info, so the files always match the nodes. Run it with ComfyUI's interpreter (the
model-file names come from lance_model, which needs torch).
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # lance_model: the official file and folder names

from workflow_builder.build import BuiltWorkflow, build, differences, read_provenance, write  # noqa: E402
from workflow_builder.catalog import all_workflows  # noqa: E402
from workflow_builder.schema import parse_object_info  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"


def fetch_object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as response:
        return json.load(response)


def build_all(object_info: dict) -> list[BuiltWorkflow]:
    schemas = parse_object_info(object_info)
    provenance = read_provenance(REPO_ROOT / "pyproject.toml")
    return [build(workflow, schemas, provenance) for workflow in all_workflows()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="ComfyUI server (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file would change")
    args = parser.parse_args(argv)
    try:
        object_info = fetch_object_info(args.url)
    except OSError as e:
        print(f"error: cannot read {args.url}/object_info ({e}); start the server with "
              f"bash scripts/comfy_env.sh start", file=sys.stderr)
        return 2
    built = build_all(object_info)
    if args.check:
        problems = differences(WORKFLOWS_DIR, built)
        for problem in problems:
            print(f"workflows/{problem}")
        if problems:
            print("run: python scripts/build_workflows.py --url URL", file=sys.stderr)
        return 1 if problems else 0
    for path in write(WORKFLOWS_DIR, built):
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
