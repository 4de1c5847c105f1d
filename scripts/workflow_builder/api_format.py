"""API format: ``{node_id: {class_type, inputs, _meta}}``, what ``POST /prompt`` takes and what the
frontend's Export (API) writes. Inputs are by name, in the node's input order; a link is
``[source node id, output slot]``. Notes and the frontend-only widgets are left out."""
from __future__ import annotations

from .graph import ResolvedNode


def to_api(resolved: list[ResolvedNode]) -> dict:
    prompt = {}
    for node in resolved:
        inputs = {}
        for spec in node.schema.inputs:
            if spec.name in node.links:
                source = node.links[spec.name]
                inputs[spec.name] = [str(source.node.id), source.slot]
            elif spec.name in node.widgets:
                inputs[spec.name] = node.widgets[spec.name]
        prompt[str(node.node.id)] = {"inputs": inputs, "class_type": node.schema.node_type,
                                     "_meta": {"title": node.title}}
    return prompt
