"""The rows of the GPU agreement check: one measured quantity each, with the bound it must stay within
(or none: recorded for the record), printed as a table and deciding the exit status."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

REL_L2 = "rel_l2"


@dataclass(frozen=True)
class Row:
    quantity: str
    measured: float | None     # None: not measured (the note says why)
    bound: float | None = None  # None: recorded, not checked
    note: str = ""
    unit: str = REL_L2          # rel_l2 (shown in %) or a plain count

    @property
    def ok(self) -> bool | None:
        """Within the bound; a bounded row that could not be measured fails."""
        if self.bound is None:
            return None
        return self.measured is not None and math.isfinite(self.measured) and self.measured <= self.bound

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def exit_status(rows: list[Row]) -> int:
    return 1 if any(row.ok is False for row in rows) else 0


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.3f}%" if unit == REL_L2 else f"{value:g}"


def render_table(rows: list[Row]) -> str:
    cells = [("quantity", "measured", "bound", "ok", "note")]
    for row in rows:
        ok = "" if row.ok is None else ("ok" if row.ok else "FAIL")
        cells.append((row.quantity, _value(row.measured, row.unit), _value(row.bound, row.unit), ok, row.note))
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(line[:4], widths)) + (" | " + line[4] if line[4]
             else "") for line in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
