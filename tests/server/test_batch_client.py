"""scripts/lance_batch.py against the real ComfyUI: the shipped Lance text-to-image API workflow on the
tiny checkpoint for a 20-item batch with one bad item and its resume, and core nodes (seconds of
interruptible work) for Ctrl-C and timeouts in the middle of a batch."""
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

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH_SCRIPT = REPO_ROOT / "scripts" / "lance_batch.py"
TEXT_TO_IMAGE = REPO_ROOT / "workflows" / "api" / "text_to_image.json"
SIZES = [(48, 32), (32, 48)]  # landscape and portrait: a swapped width/height would show
PROMPTS = ["a red fox in the snow", "ein Leuchtturm im Sturm bei Nacht", "一只在窗台上睡觉的橘猫",
           "un bol de soupe fumante, vue de dessus", "a neon street after rain"]
BAD_WIDTH = 50  # not a multiple of the 16 pixels per latent pixel
SIDE_RULE = "a multiple of 16 between 16 and 1024 px (Lance's latent is 16x smaller and at most 64 wide)"


def run_batch(comfy_server, workflow: Path, items: Path, out: Path, *extra: str,
              timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BATCH_SCRIPT), "--url", comfy_server.url, "--workflow", str(workflow),
               "--items", str(items), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def write_items(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


def node_id_of(workflow: dict, class_type: str) -> str:
    (node_id,) = [node_id for node_id, node in workflow.items() if node["class_type"] == class_type]
    return node_id


def text_to_image_items() -> list[dict]:
    """19 good items, each with its own prompt (several languages), seed and size, shrunk to one
    sampler step, and one whose width the Lance latent cannot have, so /prompt answers 400."""
    items = []
    for i in range(19):
        width, height = SIZES[i % len(SIZES)]
        items.append({"id": f"t2i-{i:02d}", "prompt": f"{PROMPTS[i % len(PROMPTS)]}, take {i}", "seed": 1000 + i,
                      "width": width, "height": height, "steps": 1})
    items.insert(7, {"id": "bad-width", "prompt": "a width Lance cannot place", "seed": 7,
                     "width": BAD_WIDTH, "height": 48, "steps": 1})
    return items


@pytest.fixture(scope="module")
def first_batch(comfy_server, served_tiny_models, tmp_path_factory):
    """One batch of 20 items on a fresh results folder; later tests resume it."""
    root = tmp_path_factory.mktemp("batch")
    items = write_items(root / "items.jsonl", text_to_image_items())
    out = root / "out"
    done = run_batch(comfy_server, TEXT_TO_IMAGE, items, out, "--concurrency", "3", timeout=480)
    return {"workflow": TEXT_TO_IMAGE, "items": items, "out": out, "run": done}


def test_batch_runs_every_item_and_reports_the_bad_one(comfy_server, first_batch):
    done, out = first_batch["run"], first_batch["out"]
    assert done.returncode == 1, f"one item fails, so the exit status is 1\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines[-1] == "batch: 19 succeeded, 1 failed, 0 skipped"
    assert len([line for line in lines if line.startswith("[")]) == 20

    results = {r["id"]: r for r in read_jsonl(out / "results.jsonl")}
    expected = {item["id"]: item for item in text_to_image_items()}
    workflow = json.loads(TEXT_TO_IMAGE.read_text(encoding="utf-8"))
    encoder, latent, sampler = (node_id_of(workflow, class_type)
                                for class_type in ("LanceTextEncode", "LanceEmptyLatent", "LanceSampler"))
    assert results.keys() == expected.keys()

    bad = results.pop("bad-width")
    assert bad["status"] == "invalid" and bad["outputs"] == []
    # The node's verdict once, though ComfyUI repeats it for each of the node's inputs.
    assert bad["error"] == (f"Prompt outputs failed validation: node {latent} (LanceEmptyLatent): width must "
                            f"be {SIDE_RULE}, got {BAD_WIDTH}; use 48")
    assert {e["type"] for e in bad["node_errors"][latent]["errors"]} == {"custom_validation_failed"}
    assert any(line.startswith("[ 8/20] bad-width invalid ") and line.endswith(f"s: {bad['error']}") for line in lines)

    pixels = set()
    for item_id, result in results.items():
        item = expected[item_id]
        assert result["status"] == "success" and result["error"] is None, result
        assert len(result["outputs"]) == 1
        saved = Path(result["outputs"][0])
        assert saved.parent == (out / item_id).resolve()
        with Image.open(saved) as image:
            image.load()  # a truncated file fails here
            assert (image.format, image.size) == ("PNG", (item["width"], item["height"]))
            pixels.add(image.tobytes())
        # The prompt ran under the id the results name, so a resume can find it on the server,
        # and with this item's overrides in place.
        entry = comfy_server.get_json(f"/history/{result['prompt_id']}")[result["prompt_id"]]
        assert entry["status"]["status_str"] == "success"
        ran = entry["prompt"][2]
        assert ran[encoder]["inputs"]["prompt"] == item["prompt"]
        assert {k: ran[sampler]["inputs"][k] for k in ("seed", "steps")} == {"seed": item["seed"], "steps": 1}
    assert len(pixels) == 19, "items with different prompts and seeds made identical images"
    assert not list(out.rglob("*.part")), "temporary download files were left behind"


def test_resume_skips_finished_items_and_refetches_missing_files(comfy_server, first_batch):
    out = first_batch["out"]
    before = {r["id"]: r for r in read_jsonl(out / "results.jsonl")}
    lost = Path(before["t2i-03"]["outputs"][0])
    kept = lost.read_bytes()
    lost.unlink()

    again = run_batch(comfy_server, first_batch["workflow"], first_batch["items"], out)
    assert again.returncode == 1, f"{again.stdout}\n{again.stderr}"
    assert again.stdout.splitlines()[-1] == "batch: 1 succeeded, 1 failed, 18 skipped"
    new_lines = read_jsonl(out / "results.jsonl")[len(before):]
    assert sorted((r["id"], r["status"]) for r in new_lines) == [("bad-width", "invalid"), ("t2i-03", "success")]
    refetched = next(r for r in new_lines if r["id"] == "t2i-03")
    assert refetched["prompt_id"] == before["t2i-03"]["prompt_id"]
    assert lost.read_bytes() == kept  # the server still had the run: its output was fetched, not remade

    third = run_batch(comfy_server, first_batch["workflow"], first_batch["items"], out)
    assert third.returncode == 1, f"{third.stdout}\n{third.stderr}"
    assert third.stdout.splitlines()[-1] == "batch: 0 succeeded, 1 failed, 19 skipped"
    skipped = [line for line in third.stdout.splitlines() if line.endswith("skipped (already succeeded)")]
    assert len(skipped) == 19


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
