"""``python -m lance_model run`` reproduces the golden reference runs end to end: token ids, split layout
and positions exactly; final latent, decoded frames and x2t answers within the bounds of
``run_parity`` (printed as a table by ``python -m tests.parity_report``)."""
from __future__ import annotations

import pytest

from run_parity import GENERATION_TASKS, TASKS, measure_task


@pytest.mark.parametrize("task", TASKS)
def test_run_command_reproduces_the_reference(golden_dir, task, tmp_path):
    rows = measure_task(golden_dir, task, tmp_path)
    quantities = {row.quantity for row in rows}
    expected = {"final latent rel-L2", "decoded mean |Δ| (uint8)"} if task in GENERATION_TASKS \
        else {"prompt token ids", "generated ids equal to the reference"}
    assert expected <= quantities
    failed = [f"{row.quantity}: {row.measured} (bound {row.bound})" for row in rows if not row.ok]
    assert not failed, "\n".join(failed)
