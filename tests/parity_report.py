"""``python -m tests.parity_report``: run every golden task through ``python -m lance_model run`` and print
one table of measured differences next to their bounds (the numbers ``tests/test_run_parity.py`` asserts).
Exit status 1 if any row is out of bounds."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.conftest import GOLDEN_DIR
from tests.run_parity import TASKS, measure_task


def main() -> int:
    rows = []
    for task in TASKS:
        with tempfile.TemporaryDirectory() as work:
            rows += measure_task(GOLDEN_DIR, task, Path(work))
    header = ("task", "quantity", "measured", "bound", "ok")
    table = [header] + [(r.task, r.quantity, r.measured, r.bound, "yes" if r.ok else "NO") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
