"""From the catalog and a server's node schemas to the files in ``workflows/``: ``<name>.json`` (UI format,
listed by ComfyUI's template browser) and ``api/<name>.json`` (its API-format twin, for ``POST /prompt``
and ``scripts/lance_batch.py``). The template browser only lists the folder's own ``*.json``, so the
twins in ``api/`` stay out of it."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lance_model.checkpoint import HF_REPO, HF_REPO_URL

from .api_format import to_api
from .catalog import Workflow
from .models import official_models
from .schema import NodeSchema
from .ui_format import Provenance, to_ui

API_FOLDER = "api"
REFERENCE_SETTINGS_NOTE = ("Sampler settings are the reference's: 30 steps, shift 3.5, cfg 4.0 between flow "
                           "time 0.4 and 1.0, seed 42.")


@dataclass(frozen=True)
class BuiltWorkflow:
    name: str
    ui: dict
    api: dict

    def files(self) -> dict[str, str]:
        """Relative path in workflows/ -> file content."""
        return {f"{self.name}.json": _dump(self.ui), f"{API_FOLDER}/{self.name}.json": _dump(self.api)}


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def read_provenance(pyproject: Path) -> Provenance:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    floor = re.fullmatch(r">=\s*([\w.]+)", project["tool"]["comfy"]["requires-comfyui"].strip())
    if floor is None:
        raise ValueError(f"{pyproject}: [tool.comfy] requires-comfyui must read '>=X.Y.Z' (the version the "
                         f"workflows' core nodes are marked with)")
    return Provenance(project["project"]["name"], project["project"]["version"], floor.group(1))


def _note(workflow: Workflow, models: list[dict], has_sampler: bool) -> str:
    folders = []
    for model in models:
        top = model["name"].split("/")[0]
        # A name inside a folder stands for the whole checkpoint folder (configs and tokenizer too).
        path = f"models/{model['directory']}/{top}" + ("/" if "/" in model["name"] else "")
        if path not in folders:
            folders.append(path)
    lines = [f"## Lance\n\n{workflow.summary}\n\nModels from "
             f"[{HF_REPO}]({HF_REPO_URL}):\n"]
    lines += [f"- `{path}`" for path in folders]
    lines.append("\n**download_missing** on Lance Checkpoint Loader fetches the Lance folders.")
    if has_sampler:
        lines.append(REFERENCE_SETTINGS_NOTE)
    return "\n".join(lines)


def build(workflow: Workflow, schemas: dict[str, NodeSchema], provenance: Provenance) -> BuiltWorkflow:
    resolved = workflow.graph.resolve(schemas)
    models = official_models(resolved)
    has_sampler = any(node.schema.node_type == "LanceSampler" for node in resolved)
    ui = to_ui(workflow.name, resolved, provenance, models, _note(workflow, models, has_sampler))
    return BuiltWorkflow(workflow.name, ui, to_api(resolved))


def write(folder: Path, built: list[BuiltWorkflow]) -> list[Path]:
    written = []
    for workflow in built:
        for relative, text in workflow.files().items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def differences(folder: Path, built: list[BuiltWorkflow]) -> list[str]:
    """Why the committed files are not what the catalog builds now (empty when they are)."""
    expected = {relative: text for workflow in built for relative, text in workflow.files().items()}
    paths = [*folder.glob("*.json"), *folder.glob(f"{API_FOLDER}/*.json")]
    found = {path.relative_to(folder).as_posix(): path for path in paths}
    problems = [f"{relative}: missing" for relative in sorted(expected.keys() - found.keys())]
    problems += [f"{relative}: not built by the catalog (remove it)"
                 for relative in sorted(found.keys() - expected.keys())]
    problems += [f"{relative}: differs from what the catalog builds"
                 for relative in sorted(expected.keys() & found.keys())
                 if found[relative].read_text(encoding="utf-8") != expected[relative]]
    return problems
