"""The shipped workflows against a real server: the committed files are exactly what the catalog builds
from the server's node schemas, the model files they name are the ones ComfyUI lists, and every API
twin runs to its outputs on the tiny checkpoint (shrunk: 2 steps, small sizes, few tokens)."""
from __future__ import annotations

import io
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import av
import pytest
from example_media import CLIP_FPS, CLIP_FRAMES, HEIGHT, WIDTH, upload_example_media
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from build_workflows import WORKFLOWS_DIR, build_all  # noqa: E402
from workflow_builder.build import API_FOLDER, differences  # noqa: E402
from workflow_builder.models import HF_RESOLVE  # noqa: E402

from lance_model.preprocess import sample_frame_indices  # noqa: E402

RUN_TIMEOUT_S = 600
SMALL = {"steps": 2, "width": 64, "height": 48, "max_new_tokens": 4}
SMALL_FRAMES = 5  # 4k+1: two latent frames
SMALL_PRESETS = {"image": "image_256res", "video": "video_192p"}
OUTPUT_FPS = 12


def workflow_names() -> list[str]:
    return sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))


def load_api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / API_FOLDER / f"{name}.json").read_text(encoding="utf-8"))


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def shrink(prompt: dict, output_folder: str) -> dict:
    """The same graph, small enough for the tiny checkpoint on a CPU; outputs go to ``output_folder``."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in inputs.items():
            if is_link(value):
                continue
            if name in SMALL:
                inputs[name] = SMALL[name]
            elif name == "frames" and value > 1:
                inputs[name] = SMALL_FRAMES
            elif name == "resolution":
                inputs[name] = SMALL_PRESETS[value.split("_")[0]]
            elif name == "filename_prefix":
                inputs[name] = f"{output_folder}/{value}"
    return prompt


def execution_error(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return f"{data['node_type']} (node {data['node_id']}): {data['exception_message']}"
    return str(entry["status"])


def fetch_output(comfy_server, ref: dict) -> bytes:
    query = urllib.parse.urlencode({key: ref[key] for key in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{comfy_server.url}/view?{query}", timeout=60) as response:
        return response.read()


def video_facts(data: bytes) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of an encoded video."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate)


def saved_files(comfy_server, prompt: dict, entry: dict, class_type: str) -> list[bytes]:
    node_ids = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    refs = [ref for node_id in node_ids for ref in entry["outputs"].get(node_id, {}).get("images", [])]
    assert len(refs) == len(node_ids), f"{class_type}: {len(node_ids)} nodes, outputs {entry['outputs']}"
    return [fetch_output(comfy_server, ref) for ref in refs]


def test_committed_workflows_are_what_the_catalog_builds_from_the_server(comfy_server):
    built = build_all(comfy_server.get_json("/object_info"))
    assert sorted(workflow.name for workflow in built) == workflow_names()
    assert differences(WORKFLOWS_DIR, built) == [], "run: python scripts/build_workflows.py --url <server>"


def test_models_lists_name_files_comfyui_lists(comfy_server, served_tiny_models):
    listed: dict[str, set[str]] = {}
    for workflow in build_all(comfy_server.get_json("/object_info")):
        assert workflow.ui["models"], f"{workflow.name} lists no models"
        for model in workflow.ui["models"]:
            assert model["url"] == HF_RESOLVE + model["name"]
            directory = model["directory"]
            if directory not in listed:
                listed[directory] = {m["name"] for m in comfy_server.get_json(f"/experiment/models/{directory}")}
            assert model["name"] in listed[directory], f"{workflow.name}: {model} not in {sorted(listed[directory])}"


def test_chained_edit_feeds_each_decoded_result_into_the_next_edit():
    prompt = load_api_twin("image_edit_chain")
    edits = [node for node in prompt.values() if node["class_type"] == "LanceEditEncode"]
    assert len(edits) == 3
    sources = [prompt[edit["inputs"]["image"][0]]["class_type"] for edit in edits]
    assert sources == ["LoadImage", "VAEDecode", "VAEDecode"]
    for earlier, later in zip(edits[:-1], edits[1:], strict=True):
        decode = prompt[later["inputs"]["image"][0]]
        sampler = prompt[decode["inputs"]["samples"][0]]
        assert prompt[sampler["inputs"]["cond"][0]] is earlier


@pytest.mark.parametrize("name", workflow_names())
def test_api_twin_runs_on_the_tiny_checkpoint(comfy_server, served_tiny_models, name, tmp_path):
    upload_example_media(comfy_server.url)
    prompt = shrink(load_api_twin(name), output_folder=f"test_workflows_{tmp_path.name}")
    entry, _ = comfy_server.run_prompt(prompt, timeout=RUN_TIMEOUT_S)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    classes = {node["class_type"] for node in prompt.values()}
    uses_source_clip = "LoadVideo" in classes

    for png in saved_files(comfy_server, prompt, entry, "SaveImage"):
        image = Image.open(io.BytesIO(png))
        if "LanceEmptyLatent" in classes:
            assert image.size == (SMALL["width"], SMALL["height"])
        else:  # an edit: the source's aspect in a bucket of 16-pixel latents
            assert image.width % 16 == 0 and image.height % 16 == 0
            assert image.width > image.height, f"{image.size} lost the source's {WIDTH}x{HEIGHT} landscape aspect"

    for mp4 in saved_files(comfy_server, prompt, entry, "SaveVideo"):
        frames, width, height, fps = video_facts(mp4)
        expected_frames = len(sample_frame_indices(CLIP_FRAMES, CLIP_FPS)) if uses_source_clip else SMALL_FRAMES
        assert (frames, fps) == (expected_frames, OUTPUT_FPS)
        if "LanceEmptyLatent" in classes:
            assert (width, height) == (SMALL["width"], SMALL["height"])

    for node_id, node in prompt.items():
        if node["class_type"] == "PreviewAny":
            answer = entry["outputs"][node["inputs"]["source"][0]]["text"]
            assert entry["outputs"][node_id]["text"] == answer and isinstance(answer[0], str)
    assert classes & {"SaveImage", "SaveVideo", "PreviewAny"}, f"{name} has no output node"
