"""Where an item's overrides land in an API-format workflow.

Rule for a named override (``prompt``, ``seed``, ...): it targets every node input whose name is
in ``NAMED_INPUTS[name]`` and whose current value is a literal. Inputs wired to another node
(``["<node_id>", <output index>]``) are never targets: they carry data, not settings. Exactly one
target must exist; none or several is an error for that item, and the item must then say where
the value goes with ``set: {"<node_id>.<input>": value}``. ``set`` may name any input of an
existing node, including an optional input the workflow leaves out, and replaces links too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

NAMED_INPUTS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text"),
    "seed": ("seed", "noise_seed"),
    "width": ("width",),
    "height": ("height",),
    "frames": ("frames", "length", "num_frames"),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "image": ("image",),
    "video": ("video", "file"),  # core LoadVideo calls its file input "file"
}

# These name a local file: it is uploaded first and the loader input gets the server's file name.
MEDIA_OVERRIDES = ("image", "video")

_VALUE_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "prompt": ("a string", (str,)),
    "seed": ("an integer", (int,)),
    "width": ("an integer", (int,)),
    "height": ("an integer", (int,)),
    "frames": ("an integer", (int,)),
    "steps": ("an integer", (int,)),
    "cfg": ("a number", (int, float)),
    "image": ("a file path", (str,)),
    "video": ("a file path", (str,)),
}


class OverrideError(ValueError):
    """An item's overrides do not fit the workflow; the item fails, the batch goes on."""


@dataclass(frozen=True)
class Assignment:
    node_id: str
    input_name: str
    value: object
    is_media: bool = False  # value is a local path still to be uploaded

    @property
    def target(self) -> str:
        return f"{self.node_id}.{self.input_name}"


def check_value(name: str, value: object) -> None:
    """Rejects a value of the wrong kind for a named override, before anything is sent."""
    kind, types = _VALUE_KINDS[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise OverrideError(f"override '{name}' must be {kind}, got {value!r}")


def is_link(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def find_targets(workflow: dict, name: str) -> list[tuple[str, str]]:
    """All (node_id, input) pairs a named override could set, in workflow order."""
    wanted = NAMED_INPUTS[name]
    return [(node_id, input_name)
            for node_id, node in workflow.items()
            for input_name, value in node.get("inputs", {}).items()
            if input_name in wanted and not is_link(value)]


def resolve_named(workflow: dict, name: str, value: object) -> Assignment:
    targets = find_targets(workflow, name)
    looked_for = " or ".join(repr(n) for n in NAMED_INPUTS[name])
    hint = f'say where it goes with "set": {{"<node_id>.<input>": ...}} instead of "{name}"'
    if not targets:
        raise OverrideError(f"override '{name}' matches no input of the workflow (looked for a "
                            f"non-linked input named {looked_for}); {hint}")
    if len(targets) > 1:
        found = ", ".join(f"{n}.{i}" for n, i in targets)
        raise OverrideError(f"override '{name}' is ambiguous: it matches {found}; {hint}")
    node_id, input_name = targets[0]
    return Assignment(node_id, input_name, value, is_media=name in MEDIA_OVERRIDES)


def parse_set_key(key: str) -> tuple[str, str]:
    # Node ids may be anything ComfyUI accepts; input names never contain a dot.
    node_id, dot, input_name = key.rpartition(".")
    if not dot or not node_id or not input_name:
        raise OverrideError(f"\"set\" key {key!r} must look like \"<node_id>.<input>\", e.g. \"3.seed\"")
    return node_id, input_name


def resolve_set(workflow: dict, key: str, value: object) -> Assignment:
    node_id, input_name = parse_set_key(key)
    if node_id not in workflow:
        raise OverrideError(f"\"set\" key {key!r} names node {node_id!r}, which the workflow does not "
                            f"have (its nodes: {', '.join(workflow)})")
    return Assignment(node_id, input_name, value)


def plan_overrides(workflow: dict, named: dict, set_values: dict) -> list[Assignment]:
    """Resolves every override of one item; raises OverrideError naming the first problem."""
    plan = [resolve_named(workflow, name, value) for name, value in named.items()]
    plan += [resolve_set(workflow, key, value) for key, value in set_values.items()]
    seen: dict[str, Assignment] = {}
    for assignment in plan:
        if assignment.target in seen:
            raise OverrideError(f"two overrides set {assignment.target}; keep only one of them")
        seen[assignment.target] = assignment
    return plan


def apply_overrides(workflow: dict, plan: list[Assignment]) -> dict:
    """A copy of the workflow with the plan's values set (media already replaced by upload names)."""
    result = copy.deepcopy(workflow)
    for assignment in plan:
        if assignment.is_media:
            raise ValueError(f"{assignment.target} still holds a local path; upload it first")
        result[assignment.node_id].setdefault("inputs", {})[assignment.input_name] = assignment.value
    return result
