"""scripts/lance_batch.py against the real ComfyUI: a batch with one bad item, a resumed batch,
and Ctrl-C in the middle of a batch. Only core nodes are used, so each run takes seconds on CPU."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

BATCH_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lance_batch.py"
MAX_RESOLUTION = 16384  # EmptyImage's width/height maximum in ComfyUI


def run_batch(comfy_server, workflow: Path, items: Path, out: Path, *extra: str,
              timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BATCH_SCRIPT), "--url", comfy_server.url, "--workflow", str(workflow),
               "--items", str(items), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def write_items(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def solid_image_items() -> list[dict]:
    """19 distinct good items (size through width/height, colour through set) and one whose
    width is over EmptyImage's maximum, so /prompt answers 400."""
    items = [{"id": f"img-{i:02d}", "width": 16 + i, "height": 8 + 2 * i, "set": {"1.color": 0x0F3A70 + 0x0A0B0C * i}}
             for i in range(19)]
    items.insert(7, {"id": "too-wide", "width": MAX_RESOLUTION + 1, "height": 8})
    return items


@pytest.fixture(scope="module")
def first_batch(comfy_server, tmp_path_factory):
    """One batch of 20 items on a fresh results folder; later tests resume it."""
    root = tmp_path_factory.mktemp("batch")
    workflow = write_json(root / "solid_api.json", {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"batch_{uuid.uuid4().hex[:8]}"}},
    })
    items = write_items(root / "items.jsonl", solid_image_items())
    out = root / "out"
    done = run_batch(comfy_server, workflow, items, out, "--concurrency", "3")
    return {"workflow": workflow, "items": items, "out": out, "run": done}


def test_batch_runs_every_item_and_reports_the_bad_one(comfy_server, first_batch):
    done, out = first_batch["run"], first_batch["out"]
    assert done.returncode == 1, f"one item fails, so the exit status is 1\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines[-1] == "batch: 19 succeeded, 1 failed, 0 skipped"
    assert len([line for line in lines if line.startswith("[")]) == 20

    results = {r["id"]: r for r in read_jsonl(out / "results.jsonl")}
    expected = {item["id"]: item for item in solid_image_items()}
    assert results.keys() == expected.keys()

    bad = results.pop("too-wide")
    assert bad["status"] == "invalid" and bad["outputs"] == []
    assert bad["error"] == (f"Prompt outputs failed validation: node 1 (EmptyImage) width: "
                            f"Value {MAX_RESOLUTION + 1} bigger than max of {MAX_RESOLUTION}")
    assert bad["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"

    for item_id, result in results.items():
        item = expected[item_id]
        assert result["status"] == "success" and result["error"] is None, result
        assert len(result["outputs"]) == 1
        saved = Path(result["outputs"][0])
        assert saved.parent == (out / item_id).resolve()
        with Image.open(saved) as image:
            image.load()  # a truncated file fails here
            assert image.size == (item["width"], item["height"])
            got = image.convert("RGB").getpixel((item["width"] - 1, item["height"] - 1))
        assert all(abs(g - w) <= 1 for g, w in zip(got, rgb(item["set"]["1.color"]))), (item_id, got)
        # The prompt ran under the id the results name, so a resume can find it on the server.
        history = comfy_server.get_json(f"/history/{result['prompt_id']}")
        assert history[result["prompt_id"]]["status"]["status_str"] == "success"
    assert not list(out.rglob("*.part")), "temporary download files were left behind"


def test_resume_skips_finished_items_and_refetches_missing_files(comfy_server, first_batch):
    out = first_batch["out"]
    before = {r["id"]: r for r in read_jsonl(out / "results.jsonl")}
    lost = Path(before["img-03"]["outputs"][0])
    lost.unlink()

    again = run_batch(comfy_server, first_batch["workflow"], first_batch["items"], out)
    assert again.returncode == 1, f"{again.stdout}\n{again.stderr}"
    assert again.stdout.splitlines()[-1] == "batch: 1 succeeded, 1 failed, 18 skipped"
    new_lines = read_jsonl(out / "results.jsonl")[len(before):]
    assert sorted((r["id"], r["status"]) for r in new_lines) == [("img-03", "success"), ("too-wide", "invalid")]
    assert lost.is_file()  # the server still had the run: its output was fetched again

    third = run_batch(comfy_server, first_batch["workflow"], first_batch["items"], out)
    assert third.stdout.splitlines()[-1] == "batch: 0 succeeded, 1 failed, 19 skipped"


def slow_workflow(blurs: int) -> dict:
    """A chain of blurs over a large image: seconds of work, interruptible between nodes."""
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": 0}}}
    previous = "1"
    for n in range(blurs):
        node_id = str(10 + n)
        workflow[node_id] = {"class_type": "ImageBlur", "inputs": {"image": [previous, 0], "blur_radius": 15, "sigma": 5.0}}
        previous = node_id
    workflow["2"] = {"class_type": "SaveImage", "inputs": {"images": [previous, 0], "filename_prefix": "batch_slow"}}
    return workflow


def queued_by(comfy_server, client_id: str) -> tuple[list[str], list[str]]:
    """This client's (running, pending) prompt ids; queue entries are [number, id, prompt, extra_data, ...]."""
    queue = comfy_server.get_json("/queue")

    def ours(entries: list) -> list[str]:
        return [entry[1] for entry in entries if entry[3].get("client_id") == client_id]
    return ours(queue["queue_running"]), ours(queue["queue_pending"])


def test_ctrl_c_cancels_the_batch_prompts_and_exits_130(comfy_server, tmp_path):
    workflow = write_json(tmp_path / "slow_api.json", slow_workflow(blurs=40))
    items = write_items(tmp_path / "items.jsonl", [{"id": f"slow-{i}", "set": {"1.color": 1000 + i}} for i in range(6)])
    client_id = uuid.uuid4().hex
    command = [sys.executable, str(BATCH_SCRIPT), "--url", comfy_server.url, "--workflow", str(workflow),
               "--items", str(items), "--out", str(tmp_path / "out"), "--client-id", client_id, "--concurrency", "3"]
    batch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            running, pending = queued_by(comfy_server, client_id)
            if len(running) + len(pending) == 3:
                break
            assert batch.poll() is None, f"the batch ended early:\n{batch.communicate()}"
            assert time.monotonic() < deadline, "the batch never had 3 prompts on the server"
            time.sleep(0.2)
        assert len(running) == 1 and len(pending) == 2
        batch.send_signal(signal.SIGINT)
        stdout, stderr = batch.communicate(timeout=60)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert batch.returncode == 130, f"{stdout}\n{stderr}"
    assert stdout.splitlines()[-1] == "batch: 0 succeeded, 0 failed, 0 skipped, 3 interrupted"
    assert queued_by(comfy_server, client_id) == ([], [])

    results = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert results.keys() == {*running, *pending}
    assert results[running[0]]["status"] == "interrupted"
    assert results[running[0]]["error"].startswith("interrupted at node ")
    for prompt_id in pending:
        assert results[prompt_id]["status"] == "interrupted"
        assert results[prompt_id]["error"] == "cancelled by Ctrl-C before it ran; removed from the server queue"
        assert comfy_server.get_json(f"/history/{prompt_id}") == {}  # never ran

    # The server is fine afterwards: a quick prompt still runs to success.
    entry = comfy_server.wait_for_history(comfy_server.post_prompt({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 5}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}), timeout=60)
    assert entry["status"]["status_str"] == "success"


def test_an_item_over_its_timeout_is_cancelled_and_the_batch_goes_on(comfy_server, tmp_path):
    workflow = write_json(tmp_path / "slow_api.json", slow_workflow(blurs=40))
    items = write_items(tmp_path / "items.jsonl", [{"id": f"late-{i}", "set": {"1.color": 2000 + i}} for i in range(2)])
    client_id = uuid.uuid4().hex
    done = run_batch(comfy_server, workflow, items, tmp_path / "out", "--timeout", "1.5", "--client-id", client_id)
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert done.stdout.splitlines()[-1] == "batch: 0 succeeded, 2 failed, 0 skipped"
    results = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert [(r["id"], r["status"], r["error"]) for r in results] == [
        (f"late-{i}", "error", "timed out after 1.5 s; cancelled on the server") for i in range(2)]
    assert queued_by(comfy_server, client_id) == ([], [])
