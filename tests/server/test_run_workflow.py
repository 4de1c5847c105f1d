"""scripts/run_workflow.py (the main job's runner) against the real server: the text-to-video twin runs
with live progress to a downloaded .mp4 that it describes; a refused workflow ends with exit 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = REPO_ROOT / "scripts" / "run_workflow.py"
TEXT_TO_VIDEO = REPO_ROOT / "workflows" / "api" / "text_to_video.json"


def run_text_to_video(comfy_server, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(RUNNER), "--url", comfy_server.url, "--workflow", str(TEXT_TO_VIDEO),
               "--out", str(out), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_text_to_video_prints_progress_and_describes_its_video(comfy_server, served_tiny_models, tmp_path):
    run = run_text_to_video(comfy_server, tmp_path, "--width", "64", "--height", "48", "--frames", "9",
                            "--steps", "3", "--seed", "5")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for title in ("Lance Checkpoint Loader", "Lance Text Encode", "Lance Sampler", "VAE Decode", "Save Video"):
        assert any(re.search(rf"\] {title} \(node \d+\)$", line) for line in lines), f"no line for {title}"
    assert any(line.endswith("Lance Sampler: 3/3") for line in lines)

    outputs = [line for line in lines if line.startswith("output: ")]
    assert len(outputs) == 1
    path, facts = re.fullmatch(r"output: (.+\.mp4) \((.*)\)", outputs[0]).groups()
    assert Path(path).parent == tmp_path.resolve() and Path(path).stat().st_size > 0
    assert facts == "9 frames, 64x48, 12 fps: duration 0.75 s"


def test_refused_workflow_exits_2_with_the_servers_reason(comfy_server, served_tiny_models, tmp_path):
    run = run_text_to_video(comfy_server, tmp_path, "--width", "70")
    assert run.returncode == 2
    assert "error: the server refused the workflow" in run.stdout
    assert "LanceEmptyLatent" in run.stdout and "got 70" in run.stdout
    assert not list(tmp_path.iterdir())
