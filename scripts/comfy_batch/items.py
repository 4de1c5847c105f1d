"""Reading the items file: one JSON object per line, each one run of the workflow.

A line that cannot be used (bad JSON, unknown key, wrong value type, missing media file) becomes
an item carrying its error, so it is reported as "invalid" while the other items still run.
Problems that make the whole file ambiguous (duplicate ids) stop the batch before it starts.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .overrides import MEDIA_OVERRIDES, NAMED_INPUTS, OverrideError, check_value

ITEM_KEYS = ("id", "set", *NAMED_INPUTS)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Fixed forever: changing it would stop resumed batches from recognising their own prompts.
_PROMPT_ID_NAMESPACE = uuid.UUID("6c1f1a52-9d0e-5b8e-a7d2-4f1b2c3d4e5f")


class ItemsError(ValueError):
    """The items file as a whole cannot be run; the batch does not start."""


@dataclass(frozen=True)
class Item:
    id: str
    line: int
    named: dict = field(default_factory=dict)  # named override -> value (media: absolute path)
    set_values: dict = field(default_factory=dict)  # "<node_id>.<input>" -> value
    error: str | None = None

    def prompt_id(self, workflow_digest: str) -> str:
        """Same workflow + same item -> same prompt id, so a resumed batch finds its earlier runs."""
        key = json.dumps([workflow_digest, self.id, self.named, self.set_values], sort_keys=True)
        return str(uuid.uuid5(_PROMPT_ID_NAMESPACE, key))


def _item_id(raw: object, line: int) -> str:
    if raw is None:
        return str(line)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise OverrideError(f"'id' must be a string or an integer, got {raw!r}")
    item_id = str(raw)
    if not _SAFE_ID.fullmatch(item_id):
        raise OverrideError(f"'id' {item_id!r} is not usable as a folder name: use up to 100 letters, "
                            "digits, '.', '_' or '-', starting with a letter or digit")
    return item_id


def parse_item(data: object, line: int, base_dir: Path) -> Item:
    """One decoded line -> Item; media paths are made absolute against ``base_dir``."""
    if not isinstance(data, dict):
        return Item(str(line), line, error=f"line {line} must be a JSON object, got {type(data).__name__}")
    try:
        item_id = _item_id(data.get("id"), line)
    except OverrideError as e:
        return Item(str(line), line, error=f"line {line}: {e}")
    try:
        unknown = sorted(set(data) - set(ITEM_KEYS))
        if unknown:
            raise OverrideError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ITEM_KEYS)}")
        named = {}
        for name in NAMED_INPUTS:
            if name in data:
                check_value(name, data[name])
                named[name] = data[name]
        for name in MEDIA_OVERRIDES:
            if name in named:
                path = (base_dir / named[name]).resolve()
                if not path.is_file():
                    raise OverrideError(f"{name} file not found: {path}")
                named[name] = str(path)
        set_values = data.get("set", {})
        if not isinstance(set_values, dict):
            raise OverrideError(f"'set' must be an object {{\"<node_id>.<input>\": value}}, got {set_values!r}")
    except OverrideError as e:
        return Item(item_id, line, error=str(e))
    return Item(item_id, line, named, dict(set_values))


def read_items(path: Path) -> list[Item]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ItemsError(f"cannot read items file {path}: {e}") from e
    items: list[Item] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            items.append(Item(str(number), number, error=f"line {number} is not valid JSON: {e}"))
            continue
        items.append(parse_item(data, number, path.parent))
    first_line: dict[str, int] = {}
    for item in items:
        if item.id in first_line:
            raise ItemsError(f"{path}: item id {item.id!r} is used on lines {first_line[item.id]} and "
                             f"{item.line}; ids must be unique (results and output folders are keyed by id)")
        first_line[item.id] = item.line
    return items
