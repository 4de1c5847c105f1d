"""The benchmark's ComfyUI mode on the CPU with the tiny sizes: the nodes run in-process under ComfyUI's
memory manager, one record per task, weight dtype and VRAM budget, fp8 runs compared with bf16."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    results = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(REPO_ROOT / "bench" / "run_bench.py"), "--tiny", "--modes", "comfyui",
               "--tasks", "t2i", "x2t_image", "--budgets", "none", "10", "--weight-dtypes", "default",
               "fp8_e4m3fn", "--results-dir", str(results)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(results.glob("cpu-*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


def test_one_record_per_task_weight_dtype_and_budget(records):
    keys = sorted((r["task"], r["weight_dtype"], r["vram_budget_gib"] or 0) for r in records)
    assert keys == sorted((task, dtype, budget) for task in ("t2i", "x2t_image")
                          for dtype in ("default", "fp8_e4m3fn") for budget in (0, 10.0))
    for record in records:
        assert "error" not in record, record
        assert record["mode"] == "comfyui"
        assert record["dtype"] == ("bf16" if record["weight_dtype"] == "default" else "fp8")
        assert record["end_to_end_s"] > 0 and record["prefill_s"] >= 0


def test_generation_records_time_every_step_and_the_vae_decode(records):
    for record in (r for r in records if r["task"] == "t2i"):
        assert len(record["steps_s"]) == record["steps"] == 3
        assert record["step_cfg_s"] > 0 and record["decode_s"] > 0
        assert record["finite"] and record["end_to_end_measured"]
        assert set(record["gpu_weight_share"]) == {"und", "gen", "vit"}


def test_budget_records_carry_the_whole_card_step_times_of_the_same_process(records):
    whole = {r["weight_dtype"]: r for r in records if r["task"] == "t2i" and r["vram_budget_gib"] is None}
    for record in (r for r in records if r["task"] == "t2i" and r["vram_budget_gib"] == 10.0):
        assert record["whole_card_step_cfg_s"] == whole[record["weight_dtype"]]["step_cfg_s"]


def test_the_captioner_record_counts_the_generated_tokens(records):
    for record in (r for r in records if r["task"] == "x2t_image"):
        assert record["new_tokens"] == 6   # the tiny x2t spec; random weights never emit the stop token
        assert record["tokens_per_s"] > 0


def test_fp8_final_latents_are_compared_with_bf16_on_the_same_noise(records):
    unconstrained = {r["weight_dtype"]: r for r in records if r["task"] == "t2i" and r["vram_budget_gib"] is None}
    assert "final_latent_rel_l2_vs_default" not in unconstrained["default"]
    error = unconstrained["fp8_e4m3fn"]["final_latent_rel_l2_vs_default"]
    assert 0 < error < 0.2   # scaled fp8 weights: a few percent on the tiny model; a lost scale gives ~100 %


def test_an_unknown_weight_dtype_is_refused_with_the_loader_options(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "bench" / "run_bench.py"), "--tiny", "--modes", "comfyui",
               "--weight-dtypes", "fp9", "--results-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert ("unknown weight dtype(s) ['fp9']; Lance Checkpoint Loader offers ['default', 'fp8_e4m3fn', "
            "'fp8_e4m3fn_fast', 'fp8_e5m2']") in done.stderr
    assert not list(tmp_path.glob("*.json"))
