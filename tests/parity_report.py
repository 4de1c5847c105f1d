"""``python -m tests.parity_report``: one table of every parity measurement against the golden reference
runs, each next to its bound (the bounds the tests assert), task by task:

- end to end through ``python -m lance_model run`` (``run_parity``): token ids, split layout and positions
  exactly, the free-running final latent with the stored noise, decoded pixels, free-running x2t answers;
- the model core given the stored inputs (``parity_measures``): ViT output from the task's media file,
  step-0 velocities, every step teacher-forced with the stored ``x_t``, x2t logits and teacher-forced argmax.

Exit status 1 if any row is out of bounds.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# The shared test helpers import one another as top-level modules, the way pytest loads them (tests/ is
# not a package and pytest puts it on sys.path); the report does the same.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from golden_paths import GOLDEN_DIR  # noqa: E402
from mot_cases import gen_case, x2t_case  # noqa: E402
from parity_measures import (COMBINED_REL_L2, SINGLE_FORWARD_REL_L2, STEP_REL_L2, TIE_ULPS,  # noqa: E402
                             step0_velocities, step_errors, teacher_forced_errors, teacher_forced_text,
                             vit_task_error)
from run_parity import TASKS, UNDERSTANDING_TASKS, Row, measure_task  # noqa: E402


def _within(task: str, quantity: str, value: float, bound: float, where: str = "") -> Row:
    return Row(task, quantity, f"{value:.4%}{where}", f"<= {bound:.1%}", value <= bound)


def _worst(task: str, quantity: str, errors: list[tuple[int, float]], bound: float) -> list[Row]:
    """One row for the step furthest from the reference (none where no step has this quantity)."""
    if not errors:
        return []
    step, value = max(errors, key=lambda e: e[1])
    return [_within(task, f"{quantity}, worst of {len(errors)} steps", value, bound, f" (step {step})")]


def _vit_rows(task: str) -> list[Row]:
    if "vit.output_0" not in load_file(str(GOLDEN_DIR / task / "tensors.safetensors")):
        return []
    error = vit_task_error(GOLDEN_DIR, task, torch.bfloat16)
    return [_within(task, "ViT output rel-L2 (from the media file)", error, SINGLE_FORWARD_REL_L2)]


def _velocity_rows(task: str) -> list[Row]:
    case = gen_case(str(GOLDEN_DIR), task)
    step0 = step_errors(case, 0, step0_velocities(case))
    steps = teacher_forced_errors(case)
    rows = [_within(task, "step 0 v_cond rel-L2", step0.cond, SINGLE_FORWARD_REL_L2)]
    if step0.uncond is not None:
        rows.append(_within(task, "step 0 v_uncond rel-L2", step0.uncond, SINGLE_FORWARD_REL_L2))
    return (rows + _worst(task, "teacher-forced v_cond rel-L2", [(e.step, e.cond) for e in steps], STEP_REL_L2)
            + _worst(task, "teacher-forced v_uncond rel-L2",
                     [(e.step, e.uncond) for e in steps if e.uncond is not None], STEP_REL_L2)
            + _worst(task, "teacher-forced v_combined rel-L2", [(e.step, e.combined) for e in steps],
                     COMBINED_REL_L2))


def _text_rows(task: str) -> list[Row]:
    trace = teacher_forced_text(x2t_case(str(GOLDEN_DIR), task))
    rows = [_within(task, f"logits of decode step {step} rel-L2", error, SINGLE_FORWARD_REL_L2)
            for step, error in enumerate(trace.stored_logits_rel_l2)]
    misses = "; ".join(f"step {m.step}: gap {m.gap_ulps:.1f} ulp" for m in trace.misses)
    rows.append(Row(task, "teacher-forced argmax equal", f"{trace.equal_steps}/{trace.steps}"
                    + (f" ({misses})" if misses else ""),
                    f">= {trace.steps - trace.allowed_misses}/{trace.steps}, misses <= {TIE_ULPS} ulp",
                    trace.argmax_ok))
    return rows


def task_rows(task: str, work: Path) -> list[Row]:
    """The end-to-end rows of ``task`` with the model-core rows placed after its exact (layout) rows."""
    end_to_end = measure_task(GOLDEN_DIR, task, work)
    core = _vit_rows(task) + (_text_rows(task) if task in UNDERSTANDING_TASKS else _velocity_rows(task))
    layout = next(i for i, row in enumerate(end_to_end) if row.bound != "exact")
    return end_to_end[:layout] + core + end_to_end[layout:]


def main() -> int:
    rows = []
    for task in TASKS:
        with tempfile.TemporaryDirectory() as work:
            rows += task_rows(task, Path(work))
    header = ("task", "quantity", "measured", "bound", "ok")
    table = [header] + [(r.task, r.quantity, r.measured, r.bound, "yes" if r.ok else "NO") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
