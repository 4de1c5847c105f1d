"""Reading an API-format workflow file and naming it by content."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


class WorkflowError(ValueError):
    """The workflow file cannot be queued as it is; the batch does not start."""


def load_workflow(path: Path) -> dict:
    try:
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise WorkflowError(f"{path} is a UI-format workflow; save it in API format "
                            "(ComfyUI menu: Workflow > Export (API)) and pass that file")
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError(f"{path} must hold a JSON object {{node_id: {{class_type, inputs}}}}")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{path}: node {node_id!r} must be an object with a string "
                                "'class_type' and an 'inputs' object")
    return workflow


def workflow_hash(workflow: dict) -> str:
    """Stable across key order and whitespace, so reformatting the file keeps resume working."""
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
