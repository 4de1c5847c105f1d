"""A small description language for workflow graphs, and its check against the server's node schemas.

    graph = Graph()
    loader = graph.add("LanceCheckpointLoader", checkpoint="Lance_3B")
    cond = graph.add("LanceTextEncode", model=loader[0], prompt="a red fox")

Inputs are given by name: an output reference (``node[slot]``) makes a link, anything else sets a widget.
Widgets left out take the node's default. ``resolve`` checks names, link types and missing sockets and
returns the nodes with every widget value filled in, in the order they were added.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .schema import CONTROL_AFTER_GENERATE, NodeSchema, SchemaError


@dataclass(frozen=True)
class Output:
    node: Node
    slot: int


@dataclass(eq=False)
class Node:
    id: int
    type: str
    given: dict
    title: str | None = None
    control: str = "fixed"  # value of a control_after_generate widget: examples reproduce by default
    lane: int = 0  # layout row band: lane 0 holds the shared inputs, each later lane one stage of the graph

    def __getitem__(self, slot: int) -> Output:
        return Output(self, slot)


@dataclass(frozen=True)
class ResolvedNode:
    node: Node
    schema: NodeSchema
    links: dict  # input name -> Output
    widgets: dict  # widget name -> value, for every widget of the schema, in widget order

    @property
    def title(self) -> str:
        return self.node.title or self.schema.display_name


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)

    def add(self, node_type: str, *, title: str | None = None, control: str = "fixed", lane: int = 0,
            **inputs) -> Node:
        if control not in CONTROL_AFTER_GENERATE:
            raise SchemaError(f"control must be one of {CONTROL_AFTER_GENERATE}, got {control!r}")
        node = Node(len(self.nodes) + 1, node_type, inputs, title, control, lane)
        self.nodes.append(node)
        return node

    def resolve(self, schemas: dict[str, NodeSchema]) -> list[ResolvedNode]:
        resolved: dict[int, ResolvedNode] = {}
        for node in self.nodes:
            if node.type not in schemas:
                raise SchemaError(f"node type {node.type} is not served by the server; is the pack loaded?")
            resolved[node.id] = _resolve_node(node, schemas[node.type], resolved)
        return list(resolved.values())


def _resolve_node(node: Node, schema: NodeSchema, earlier: dict[int, ResolvedNode]) -> ResolvedNode:
    where = f"node {node.id} ({node.type})"
    links, widgets = {}, {}
    for name, value in node.given.items():
        spec = schema.input(name)
        if isinstance(value, Output):
            source = earlier.get(value.node.id)
            if source is None:
                raise SchemaError(f"{where}: input '{name}' links to node {value.node.id}, which must be added first")
            if not 0 <= value.slot < len(source.schema.outputs):
                raise SchemaError(f"{where}: {source.schema.node_type} has no output {value.slot}")
            produced = source.schema.outputs[value.slot].type
            if spec.type != "*" and produced != spec.type:
                raise SchemaError(f"{where}: input '{name}' takes {spec.type}, but output {value.slot} of "
                                  f"{source.schema.node_type} is {produced}")
            links[name] = value
        elif not spec.is_widget:
            raise SchemaError(f"{where}: socket '{name}' ({spec.type}) needs a link, got {value!r}")
        # Core loaders list the server's files, which vary; the pack's combos are fixed choices.
        elif spec.type == "COMBO" and not schema.is_core and value not in spec.choices:
            raise SchemaError(f"{where}: '{name}' must be one of {list(spec.choices)}, got {value!r}")
    for spec in schema.inputs:
        if not spec.is_widget and not spec.optional and spec.name not in links:
            raise SchemaError(f"{where}: required socket '{spec.name}' ({spec.type}) is not connected")
    for spec in schema.widgets:
        if spec.name not in links:
            widgets[spec.name] = node.given[spec.name] if spec.name in node.given else spec.default()
        else:  # a widget turned into an input keeps a value in the UI; the link wins when run
            widgets[spec.name] = spec.default()
    return ResolvedNode(node, schema, links, widgets)
