"""Node schemas as the frontend sees them, read from ``/object_info``.

The frontend makes a widget of every INT, FLOAT, STRING, BOOLEAN and COMBO input (unless it is forced to
be a socket) and a socket of every other input. It also adds widgets that are not inputs of the node:
a ``control_after_generate`` combo right after a seed-like widget, and an upload button after a file combo.
Those extra widgets have values in a UI workflow's positional ``widgets_values`` but not in API format.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Combo options that make the frontend add an "upload" button widget, and the value it serialises.
UPLOAD_OPTIONS = {"image_upload": "image", "video_upload": "image"}
CONTROL_AFTER_GENERATE = ("fixed", "increment", "decrement", "randomize")
# INT widgets the frontend gives a control_after_generate widget unless the input says false.
SEED_NAMES = ("seed", "noise_seed")


class SchemaError(ValueError):
    """A graph description does not fit the nodes the server offers."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # COMBO for both the V3 ("COMBO", {options}) and the legacy ([options], {}) spelling
    options: dict
    choices: tuple = ()  # combo options
    optional: bool = False

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control_after_generate(self) -> bool:
        if self.type != "INT":
            return False
        flag = self.options.get("control_after_generate")
        return self.name in SEED_NAMES if flag is None else bool(flag)

    @property
    def upload_value(self) -> str | None:
        return next((value for key, value in UPLOAD_OPTIONS.items() if self.options.get(key)), None)

    def default(self):
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            if not self.choices:
                raise SchemaError(f"combo '{self.name}' has no options and no default; give it a value")
            return self.choices[0]
        raise SchemaError(f"widget '{self.name}' ({self.type}) has no default; give it a value")


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: str


@dataclass(frozen=True)
class NodeSchema:
    node_type: str
    display_name: str
    python_module: str
    inputs: tuple[InputSpec, ...]  # in the server's input_order: required, then optional
    outputs: tuple[OutputSpec, ...]

    @property
    def sockets(self) -> list[InputSpec]:
        return [spec for spec in self.inputs if not spec.is_widget]

    @property
    def widgets(self) -> list[InputSpec]:
        return [spec for spec in self.inputs if spec.is_widget]

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise SchemaError(f"{self.node_type} has no input '{name}'; its inputs are {[s.name for s in self.inputs]}")

    @property
    def is_core(self) -> bool:
        return not self.python_module.startswith("custom_nodes.")


def _input_spec(name: str, raw: list, optional: bool) -> InputSpec:
    kind, options = raw[0], (raw[1] if len(raw) > 1 else {})
    if isinstance(kind, list):  # legacy combo: the options list stands in for the type
        return InputSpec(name, "COMBO", options, tuple(kind), optional)
    return InputSpec(name, kind, options, tuple(options.get("options", ())), optional)


def parse_object_info(object_info: dict) -> dict[str, NodeSchema]:
    schemas = {}
    for node_type, info in object_info.items():
        inputs = []
        for group in ("required", "optional"):
            declared = info["input"].get(group, {})
            for name in info.get("input_order", {}).get(group, list(declared)):
                inputs.append(_input_spec(name, declared[name], optional=group == "optional"))
        outputs = tuple(OutputSpec(name, kind) for name, kind in zip(info["output_name"], info["output"], strict=True))
        schemas[node_type] = NodeSchema(node_type, info["display_name"], info["python_module"], tuple(inputs),
                                        outputs)
    return schemas
