"""The agreement check that the parity bounds are calibrated for: the golden tiny checkpoints on the
golden stored inputs, through the parity tests' own cases (``tests/mot_cases.py``) and measures
(``tests/parity_measures.py``), run on the bench's device in bf16 and in fp32.

The bounds are the reference's own bf16-vs-fp32 spread on these very inputs (golden README §5), so here
a row out of bounds means a numerical problem of this device's kernels, not a model that is more
sensitive to rounding. Per generation task: the step-0 velocities (both CFG branches and their
combination) and every step teacher-forced with the stored ``x_t``; per x2t task: the logits of the
decode steps the fixture stores, and the teacher-forced greedy choices; the ViT output from the task's
media file where the task has one. bf16 (as users run it) is compared with the reference's stored
outputs, fp32 (eager, SDPA math) with bf16. A part of a task that cannot run (no video decoder, say)
gives one failing row with the error and the others still run.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

# The parity tests' helpers import one another as top-level modules (pytest puts tests/ on the path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from golden_paths import GOLDEN_DIR  # noqa: E402
from mot_cases import GEN_TASKS, X2T_TASKS, GenCase, X2TCase, gen_case, rel_l2, x2t_case  # noqa: E402
from parity_measures import (COMBINED_REL_L2, SINGLE_FORWARD_REL_L2, STEP_REL_L2, TIE_ULPS,  # noqa: E402
                             StepErrors, StepVelocities, step0_velocities, step_errors, step_velocities,
                             teacher_forced_text, vit_task_error)

from agreement_rows import Row  # noqa: E402
from attention_agreement import fp32_math_reference  # noqa: E402


def require_golden_dir() -> Path:
    if not (GOLDEN_DIR / "README.md").is_file():
        raise SystemExit(f"golden fixtures not found at {GOLDEN_DIR}; set LANCE_GOLDEN_DIR to the golden folder")
    return GOLDEN_DIR


def golden_tasks(golden_dir: Path) -> list[str]:
    """The tasks whose reference run the golden folder holds, generation first."""
    return [task for task in GEN_TASKS + X2T_TASKS if (golden_dir / task / "tensors.safetensors").is_file()]


def device_label(device: torch.device) -> str:
    return device.type.upper()


def _error_note(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"


def _attempt(label: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """``measure()``, or one failing row naming the error, so that the other parts still run."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - any failure of one part is recorded, not fatal
        return [Row(f"{label}: runs", None, SINGLE_FORWARD_REL_L2, note=_error_note(error))]


def _worst(errors: list[tuple[str, float]]) -> tuple[float, str]:
    where, value = max(errors, key=lambda e: e[1])
    return value, where


# ---------------------------------------------------------------- generation velocities

def _teacher_forced(case: GenCase) -> list[StepVelocities]:
    return [step_velocities(case, step, case.tensors[f"gen.x_t_before_step_{step:02d}__updated_rows"])
            for step in range(case.settings.steps)]


def _rel_or_none(actual: torch.Tensor | None, expected: torch.Tensor | None) -> float | None:
    """None where neither side has the branch; inf where only one side does."""
    if actual is None and expected is None:
        return None
    return float("inf") if actual is None or expected is None else rel_l2(actual, expected)


def _versus(step: int, actual: StepVelocities, expected: StepVelocities) -> StepErrors:
    return StepErrors(step, rel_l2(actual.cond, expected.cond), _rel_or_none(actual.uncond, expected.uncond),
                      rel_l2(actual.combined, expected.combined))


def _worst_branch(errors: list[StepErrors]) -> tuple[float, str]:
    """The largest v_cond or v_uncond error (where the step guides) and where it is."""
    return _worst([(f"step {e.step} v_cond", e.cond) for e in errors]
                  + [(f"step {e.step} v_uncond", e.uncond) for e in errors if e.uncond is not None])


def _worst_combined(errors: list[StepErrors]) -> tuple[float, str]:
    return _worst([(f"step {e.step}", e.combined) for e in errors])


def _velocity_rows(golden_dir: Path, task: str, device: torch.device) -> list[Row]:
    label, dev = f"golden {task}", device_label(device)
    bf16_vs_reference, fp32_vs_bf16 = f"bf16 {dev} vs reference", f"fp32 {dev} vs bf16 {dev}"
    case = gen_case(str(golden_dir), task, device, torch.bfloat16)
    step0, steps = step0_velocities(case), _teacher_forced(case)
    with fp32_math_reference():
        case32 = gen_case(str(golden_dir), task, device, torch.float32)
        step0_32, steps32 = step0_velocities(case32), _teacher_forced(case32)

    rows = []
    ours0, fp32_0 = step_errors(case, 0, step0), _versus(0, step0_32, step0)
    fp32_to_reference0 = step_errors(case, 0, step0_32)
    for name, bound in (("cond", SINGLE_FORWARD_REL_L2), ("uncond", SINGLE_FORWARD_REL_L2),
                        ("combined", COMBINED_REL_L2)):
        if getattr(ours0, name) is None:
            continue  # the window of guidance is closed at step 0
        rows += [Row(f"{label} step-0 v_{name}, {bf16_vs_reference}", getattr(ours0, name), bound),
                 Row(f"{label} step-0 v_{name}, {fp32_vs_bf16}", getattr(fp32_0, name), bound,
                     note=f"fp32 vs reference: {getattr(fp32_to_reference0, name) * 100:.3f}%")]

    ours = [step_errors(case, step, v) for step, v in enumerate(steps)]
    fp32 = [_versus(step, v32, v) for step, (v32, v) in enumerate(zip(steps32, steps))]
    fp32_to_reference = [step_errors(case, step, v) for step, v in enumerate(steps32)]
    for quantity, bound, worst in (("v_cond/v_uncond", STEP_REL_L2, _worst_branch),
                                   ("v_combined", COMBINED_REL_L2, _worst_combined)):
        worst_of = f"worst of {len(steps)} steps"
        value, where = worst(ours)
        rows.append(Row(f"{label} teacher-forced {quantity}, {bf16_vs_reference}, {worst_of}", value, bound,
                        note=where))
        value, where = worst(fp32)
        rows.append(Row(f"{label} teacher-forced {quantity}, {fp32_vs_bf16}, {worst_of}", value, bound,
                        note=f"{where}; fp32 vs reference: {worst(fp32_to_reference)[0] * 100:.3f}%"))
    return rows


# ---------------------------------------------------------------- x2t logits

def _stored_step_logits(case: X2TCase) -> list[torch.Tensor]:
    """Logits of the decode steps whose reference logits the fixture stores, fed the reference's tokens
    (consumes the case's cache)."""
    ref = case.tensors
    tokens = [int(ref["seq.packed_text_ids"][case.context_len])] + ref["x2t.generated_ids"].tolist()
    positions = ref["pos.prompt_plus_256_pads"][:, case.context_len:]
    logits, step = [], 0
    while f"x2t.logits_{step:02d}" in ref:
        logits.append(case.decoder.decode_step(torch.tensor([tokens[step]]), positions[:, step:step + 1],
                                               case.cache)[0])
        step += 1
    return logits


def _logit_rows(golden_dir: Path, task: str, device: torch.device) -> list[Row]:
    label, dev = f"golden {task}", device_label(device)
    case = x2t_case(str(golden_dir), task, device, torch.bfloat16)
    trace = teacher_forced_text(case)
    logits = _stored_step_logits(x2t_case(str(golden_dir), task, device, torch.bfloat16))
    with fp32_math_reference():
        logits32 = _stored_step_logits(x2t_case(str(golden_dir), task, device, torch.float32))
    reference = [case.tensors[f"x2t.logits_{step:02d}"][0] for step in range(len(logits))]

    def worst(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> tuple[float, str]:
        return _worst([(f"step {step}", rel_l2(a, b)) for step, (a, b) in enumerate(zip(actual, expected))])

    steps = f"logits of decode steps 0-{len(logits) - 1}"
    ours, where = _worst([(f"step {step}", error) for step, error in enumerate(trace.stored_logits_rel_l2)])
    versus, where32 = worst(logits32, logits)
    to_reference, _ = worst(logits32, reference)
    choices = f"{label} teacher-forced greedy choices unlike the reference's"
    return [
        Row(f"{label} {steps}, bf16 {dev} vs reference, worst", ours, SINGLE_FORWARD_REL_L2, note=where),
        Row(f"{label} {steps}, fp32 {dev} vs bf16 {dev}, worst", versus, SINGLE_FORWARD_REL_L2,
            note=f"{where32}; fp32 vs reference: {to_reference * 100:.3f}%"),
        Row(f"{choices} (of {trace.steps}), bf16 {dev}", len(trace.misses), trace.allowed_misses, unit="tokens",
            note="; ".join(f"step {m.step}: {m.gap_ulps:.1f} ulp" for m in trace.misses)),
        Row(f"{choices}, not near-ties (> {TIE_ULPS} bf16 ulp), bf16 {dev}",
            sum(m.gap_ulps > TIE_ULPS for m in trace.misses), 0, unit="tokens"),
    ]


# ---------------------------------------------------------------- ViT and the whole section

def _vit_rows(golden_dir: Path, task: str, device: torch.device) -> list[Row]:
    """The ViT output from the task's media file; fp32 against the reference too (the reference's own
    fp32 output is within 0.62 % of its bf16 one), since the measure returns only its error."""
    label, dev = f"golden {task}", device_label(device)
    ours = vit_task_error(golden_dir, task, torch.bfloat16, device)
    with fp32_math_reference():
        fp32 = vit_task_error(golden_dir, task, torch.float32, device)
    return [Row(f"{label} ViT output from the media file, bf16 {dev} vs reference", ours, SINGLE_FORWARD_REL_L2),
            Row(f"{label} ViT output from the media file, fp32 {dev} vs reference", fp32, SINGLE_FORWARD_REL_L2)]


def _has_vit_output(golden_dir: Path, task: str) -> bool:
    with safe_open(str(golden_dir / task / "tensors.safetensors"), "pt") as tensors:
        return "vit.output_0" in tensors.keys()


def golden_rows(golden_dir: Path, tasks: list[str], device: torch.device,
                done: Callable[[str], None]) -> list[Row]:
    """Every row of ``tasks``; ``done(section)`` after each task."""
    rows = []
    for task in tasks:
        if _has_vit_output(golden_dir, task):
            rows += _attempt(f"golden {task} ViT", partial(_vit_rows, golden_dir, task, device))
        measure = _logit_rows if task in X2T_TASKS else _velocity_rows
        rows += _attempt(f"golden {task}", partial(measure, golden_dir, task, device))
        done(f"golden: {task}")
    return rows
