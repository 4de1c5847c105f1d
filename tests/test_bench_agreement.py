"""The GPU agreement check (``bench/gpu_agreement.py``) run with ``--tiny`` on the CPU (both sections:
the tiny full-size model and the golden checkpoints), and its rows' pass/fail logic. The bench modules
import each other by bare name, so the bench folder goes on the path."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path[:0] = [str(BENCH_DIR)]

import golden_agreement  # noqa: E402
import gpu_agreement  # noqa: E402
from agreement_rows import Row, exit_status, render_table  # noqa: E402
from mot_cases import GEN_TASKS, X2T_TASKS  # noqa: E402
from parity_measures import (COMBINED_REL_L2, FINAL_LATENT_REL_L2, SINGLE_FORWARD_REL_L2, STEP_REL_L2,  # noqa: E402
                             TEXT_STEPS_PER_ALLOWED_FLIP, TIE_ULPS)

from lance_model.attention_backends import installed_backends  # noqa: E402


def _run(tmp_path: Path, *argv: str) -> tuple[int, Path, dict]:
    status = gpu_agreement.main(["--tiny", "--results-dir", str(tmp_path), *argv])
    written = list(tmp_path.glob("agreement*.json"))
    assert len(written) == 1
    return status, written[0], json.loads(written[0].read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[int, dict]:
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.fail("COMFYUI_PATH is not set; run the tests through scripts/test.sh")
    status, path, report = _run(tmp_path_factory.mktemp("agreement"), "--tokenizer",
                                str(Path(comfyui) / "comfy" / "text_encoders" / "qwen25_tokenizer"))
    assert path.name.startswith("agreement-cpu-") and report["sections"] == ["full", "golden"]
    return status, report


def test_bounds_are_the_model_core_parity_bounds():
    assert gpu_agreement.SINGLE_FORWARD_REL_L2 is SINGLE_FORWARD_REL_L2
    assert gpu_agreement.COMBINED_REL_L2 is COMBINED_REL_L2
    assert gpu_agreement.FINAL_LATENT_REL_L2 == FINAL_LATENT_REL_L2["t2i"] == FINAL_LATENT_REL_L2["t2v"]


def test_tiny_run_measures_bf16_against_fp32_within_the_bounds(tiny_report):
    status, report = tiny_report
    rows = {row["quantity"]: row for row in report["rows"]}
    assert status == 0 and report["tiny"] is True
    expected = {
        "t2i 64x64 step-0 v_cond, bf16 vs fp32": SINGLE_FORWARD_REL_L2,
        "t2i 64x64 step-0 v_uncond, bf16 vs fp32": SINGLE_FORWARD_REL_L2,
        "t2i 64x64 step-0 v_combined, bf16 vs fp32": COMBINED_REL_L2,
        "t2i 64x64 8-step latent, bf16 vs fp32": FINAL_LATENT_REL_L2["t2i"],
        "t2v 64x96x5f step-0 v_cond, bf16 vs fp32": SINGLE_FORWARD_REL_L2,
        "x2t ViT output (56 px), bf16 vs fp32": SINGLE_FORWARD_REL_L2,
        "x2t logits after the prompt, bf16 vs fp32": SINGLE_FORWARD_REL_L2,
        "t2i 64x64 step-0 v_cond, SDPA MATH vs fp32 math": SINGLE_FORWARD_REL_L2,
    }
    for quantity, bound in expected.items():
        row = rows[quantity]
        assert row["bound"] == bound and row["ok"] is True
        # bf16 rounding shows (a zero would mean both runs computed in one precision)
        assert 0 < row["measured"] <= bound
    tokens = rows["x2t greedy tokens equal to fp32's before the first difference (of 32)"]
    assert tokens["bound"] is None and tokens["unit"] == "tokens" and 0 <= tokens["measured"] <= 32


def test_tiny_run_records_kernels_that_cannot_run_here_without_failing(tiny_report):
    _, report = tiny_report
    rows = {row["quantity"]: row for row in report["rows"]}
    # the CPU has no cuDNN or memory-efficient SDPA kernel: recorded with the error, not bounded
    for name in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        row = rows[f"t2i 64x64 SDPA {name}: runs"]
        assert row["measured"] is None and row["bound"] is None and row["note"].startswith("RuntimeError")
    flash = rows.get("t2i 64x64 flash_attn")
    assert (flash is not None and flash["note"] == "flash_attn not installed") == ("flash_attn" not in
                                                                                   installed_backends())
    kernel = [row for row in report["rows"] if row["quantity"].startswith("attention kernel")]
    assert kernel and all(row["ok"] in (True, None) for row in kernel)
    assert all(math.isfinite(row["measured"]) for row in kernel if row["measured"] is not None)


def _golden_row(rows: list[dict], task: str, *parts: str) -> dict:
    """The one row of ``task`` whose quantity names every one of ``parts``."""
    found = [row for row in rows if row["quantity"].startswith(f"golden {task} ")
             and all(part in row["quantity"] for part in parts)]
    assert len(found) == 1, (task, parts, [row["quantity"] for row in found])
    return found[0]


GEN_GOLDEN_ROWS = {("step-0 v_cond, ",): SINGLE_FORWARD_REL_L2, ("step-0 v_uncond, ",): SINGLE_FORWARD_REL_L2,
                   ("step-0 v_combined, ",): COMBINED_REL_L2,
                   ("teacher-forced v_cond/v_uncond, ", ", worst of "): STEP_REL_L2,
                   ("teacher-forced v_combined, ", ", worst of "): COMBINED_REL_L2}
X2T_GOLDEN_ROWS = {("logits of decode steps 0-", ", worst"): SINGLE_FORWARD_REL_L2}


def test_golden_section_measures_bf16_against_the_reference_and_fp32_against_bf16(tiny_report, golden_dir):
    _, report = tiny_report
    rows = [row for row in report["rows"] if row["quantity"].startswith("golden ")]
    tasks = [task for task in GEN_TASKS + X2T_TASKS if (golden_dir / task).is_dir()]
    assert report["golden_tasks"] == tasks and tasks
    for task in tasks:
        for parts, bound in (X2T_GOLDEN_ROWS if task in X2T_TASKS else GEN_GOLDEN_ROWS).items():
            ours = _golden_row(rows, task, *parts, "bf16 CPU vs reference")
            fp32 = _golden_row(rows, task, *parts, "fp32 CPU vs bf16 CPU")
            assert ours["bound"] == fp32["bound"] == bound and ours["ok"] is fp32["ok"] is True
            # bf16 rounding shows between fp32 and bf16 (a zero would mean both computed in one precision)
            assert 0 <= ours["measured"] <= bound and 0 < fp32["measured"] <= bound
            assert "fp32 vs reference: " in fp32["note"]
    vit = [row for row in rows if " ViT output from the media file, " in row["quantity"]]
    with_vit = [task for task in tasks if "vit.output_0" in load_file(str(golden_dir / task / "tensors.safetensors"))]
    assert [row["quantity"].split()[1] for row in vit] == [task for task in with_vit for _ in ("bf16", "fp32")]
    assert all(row["ok"] is True for row in vit) and not [row for row in rows if row["quantity"].endswith(": runs")]


def test_golden_section_alone_writes_its_own_file(monkeypatch, tmp_path, golden_dir):
    monkeypatch.setattr(gpu_agreement, "golden_tasks", lambda golden_dir: ["x2t_image"])
    status, path, report = _run(tmp_path, "--sections", "golden")
    assert status == 0 and path.name.startswith("agreement-golden-cpu-")
    assert report["sections"] == ["golden"] and "sizes" not in report
    rows = report["rows"]
    assert len(rows) == 6 and all(row["quantity"].startswith("golden x2t_image ") for row in rows)
    answer = load_file(str(golden_dir / "x2t_image" / "tensors.safetensors"))["x2t.generated_ids"]
    choices = _golden_row(rows, "x2t_image", "greedy choices unlike", f"(of {answer.numel()}), bf16 CPU")
    near_ties = _golden_row(rows, "x2t_image", "greedy choices unlike",
                            f"not near-ties (> {TIE_ULPS} bf16 ulp), bf16 CPU")
    assert choices["unit"] == near_ties["unit"] == "tokens" and near_ties["bound"] == 0
    assert choices["bound"] == answer.numel() // TEXT_STEPS_PER_ALLOWED_FLIP and 0 <= choices["measured"]
    assert choices["ok"] is near_ties["ok"] is True


def test_a_golden_part_that_cannot_run_gives_a_failing_row_and_the_others_still_run(monkeypatch, golden_dir):
    def no_video_decoder(*args):
        raise ImportError("PyAV is not installed")

    monkeypatch.setattr(golden_agreement, "vit_task_error", no_video_decoder)
    done = []
    rows = golden_agreement.golden_rows(golden_dir, ["x2t_video"], torch.device("cpu"), done.append)
    failed = rows[0]
    assert (failed.quantity, failed.measured, failed.ok) == ("golden x2t_video ViT: runs", None, False)
    assert failed.note == "ImportError: PyAV is not installed" and exit_status(rows) == 1
    assert len(rows) == 5 and all(row.ok is not False for row in rows[1:]) and done == ["golden: x2t_video"]


def test_a_row_over_its_bound_or_unmeasured_under_a_bound_fails_the_run():
    recorded = [Row("within", 0.005, 0.01), Row("no bound", None, None, note="sage not installed")]
    assert exit_status(recorded) == 0
    over, missing = Row("over", 0.011, 0.01), Row("kernel error", None, 0.01, note="RuntimeError: x")
    assert exit_status(recorded + [over]) == 1 and exit_status(recorded + [missing]) == 1
    lines = render_table(recorded + [over, Row("tokens", 12, None, unit="tokens")]).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["quantity", "measured", "bound", "ok", "note"]
    assert [cell.strip() for cell in lines[4].split("|")] == ["over", "1.100%", "1.000%", "FAIL"]
    assert [cell.strip() for cell in lines[2].split("|")] == ["within", "0.500%", "1.000%", "ok"]
    assert [cell.strip() for cell in lines[5].split("|")] == ["tokens", "12", "-", ""]
