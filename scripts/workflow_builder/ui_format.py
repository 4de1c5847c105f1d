"""UI format (version 0.4): what the frontend loads, saves and lists in its template browser.

Nodes keep their sockets first and their widget inputs after them, as the frontend serialises them;
``widgets_values`` is positional and includes the frontend-only widgets (see schema.py). Nodes are laid
out in columns by their distance from the graph's inputs, in row bands (lanes) where the graph asks.
The frontend only grows a node whose size is too small for its widgets, so sizes are estimates.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from .graph import ResolvedNode

COLUMN_GAP, ROW_GAP = 60, 40
SLOT_HEIGHT, WIDGET_HEIGHT, MULTILINE_HEIGHT = 22, 26, 110
NODE_WIDTH, WIDE_NODE_WIDTH = 300, 400
NOTE_SIZE = (380, 260)
OPTIONAL_SOCKET_SHAPE = 7  # the frontend draws optional sockets hollow
CORE_REGISTRY_ID = "comfy-core"


@dataclass(frozen=True)
class Provenance:
    """Registry ids and versions written into each node's properties, so the frontend can say which
    pack provides a missing node."""
    pack_id: str
    pack_version: str
    core_version: str

    def properties(self, node: ResolvedNode) -> dict:
        if node.schema.is_core:
            return {"cnr_id": CORE_REGISTRY_ID, "ver": self.core_version}
        return {"cnr_id": self.pack_id, "ver": self.pack_version}


def _size(node: ResolvedNode) -> list[int]:
    rows = max(len(node.schema.sockets), len(node.schema.outputs), 1)
    multiline = sum(1 for spec in node.schema.widgets if spec.options.get("multiline"))
    widget_rows = len(node.schema.widgets) - multiline + sum(
        1 for spec in node.schema.widgets if spec.has_control_after_generate or spec.upload_value)
    height = rows * SLOT_HEIGHT + widget_rows * WIDGET_HEIGHT + multiline * MULTILINE_HEIGHT + 10
    return [WIDE_NODE_WIDTH if multiline else NODE_WIDTH, height]


def _columns(resolved: list[ResolvedNode]) -> dict[int, int]:
    """Column of each node: one right of its furthest source in the same lane (nodes come in dependency
    order). Lanes after the first start right of lane 0, which holds the inputs they share."""
    column: dict[int, int] = {}
    for node in resolved:
        if node.node.lane == 0:
            column[node.node.id] = max((column[link.node.id] + 1 for link in node.links.values()), default=0)
    first = max(column.values(), default=-1) + 1
    for node in resolved:
        if node.node.lane != 0:
            column[node.node.id] = max((column[link.node.id] + 1 for link in node.links.values()
                                        if link.node.lane == node.node.lane), default=first)
    return column


def _layout(resolved: list[ResolvedNode], left: int) -> dict[int, tuple[list[int], list[int]]]:
    """Columns left to right. In a column, a lane's nodes stack downwards; later lanes sit below each
    other, lane 0 (in columns of its own) starts at the top."""
    column = _columns(resolved)
    sizes = {node.node.id: _size(node) for node in resolved}
    column_x, x = {}, left
    for index in range(max(column.values(), default=-1) + 1):
        column_x[index] = x
        x += max((sizes[n.node.id][0] for n in resolved if column[n.node.id] == index), default=0) + COLUMN_GAP
    placed, lane_top = {}, 0
    for lane in sorted({node.node.lane for node in resolved}):
        top = lane_top if lane else 0
        stacked: dict[int, int] = {}  # column -> height used so far in this lane
        for node in (n for n in resolved if n.node.lane == lane):
            index, size = column[node.node.id], sizes[node.node.id]
            placed[node.node.id] = ([column_x[index], top + stacked.get(index, 0)], size)
            stacked[index] = stacked.get(index, 0) + size[1] + ROW_GAP
        if lane:
            lane_top += max(stacked.values())
    return placed


def _widget_values(node: ResolvedNode) -> list:
    values = []
    for spec in node.schema.widgets:
        values.append(node.widgets[spec.name])
        if spec.has_control_after_generate:
            values.append(node.node.control)
        if spec.upload_value:
            values.append(spec.upload_value)
    return values


def _input_slots(node: ResolvedNode) -> list:
    """The node's input entries in the frontend's order: sockets, then widgets."""
    slots = []
    for spec in node.schema.sockets + node.schema.widgets:
        entry = {"name": spec.name, "type": spec.type}
        if spec.optional and not spec.is_widget:
            entry["shape"] = OPTIONAL_SOCKET_SHAPE
        if spec.is_widget:
            entry["widget"] = {"name": spec.name}
        entry["link"] = None
        slots.append(entry)
    return slots


def _note_node(node_id: int, order: int, text: str, pos: list[int]) -> dict:
    return {"id": node_id, "type": "MarkdownNote", "pos": pos, "size": list(NOTE_SIZE), "flags": {},
            "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def to_ui(name: str, resolved: list[ResolvedNode], provenance: Provenance, models: list[dict], note: str) -> dict:
    """``note`` (markdown) is shown left of the graph."""
    placed = _layout(resolved, left=NOTE_SIZE[0] + COLUMN_GAP)
    nodes, links = [], []
    by_id: dict[int, dict] = {}
    for order, node in enumerate(resolved):
        pos, size = placed[node.node.id]
        outputs = [{"name": spec.name, "type": spec.type, "links": None} for spec in node.schema.outputs]
        entry = {"id": node.node.id, "type": node.schema.node_type, "pos": pos, "size": size, "flags": {},
                 "order": order, "mode": 0, "inputs": _input_slots(node), "outputs": outputs,
                 "properties": {"Node name for S&R": node.schema.node_type} | provenance.properties(node),
                 "widgets_values": _widget_values(node)}
        if node.node.title:
            entry["title"] = node.node.title
        nodes.append(entry)
        by_id[node.node.id] = entry
        for slot, input_entry in enumerate(entry["inputs"]):
            source = node.links.get(input_entry["name"])
            if source is None:
                continue
            link_id = len(links) + 1
            source_output = by_id[source.node.id]["outputs"][source.slot]
            links.append([link_id, source.node.id, source.slot, node.node.id, slot, source_output["type"]])
            input_entry["link"] = link_id
            source_output["links"] = (source_output["links"] or []) + [link_id]
    nodes.append(_note_node(len(resolved) + 1, len(resolved), note, [0, 0]))
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{provenance.pack_id}/workflows/{name}")), "revision": 0,
            "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4, "models": models}
