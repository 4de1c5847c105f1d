"""Bad input against a real server: every case is answered before any heavy work, either by an HTTP 400
(the prompt is not queued) or by an execution_error of the first Lance node that can see the problem,
with a message naming the problem and the fix. Image layouts Lance can use (alpha, gray, 16-bit) are
converted instead, and give exactly what their RGB equivalent gives."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import requests
import torch
from comfy_client import PromptRejected
from PIL import Image
from reliability_graphs import (WAN21_VAE_NAME, Graph, config_only_copy, corrupt_copy, t2i, truncated_copy,
                                write_wan21_vae)
from reliability_server import tiny_reliability_server
from safetensors.torch import load as load_safetensors

from lance_model.preprocess import rgb_frames

TIMEOUT_S = 300
WIDTH, HEIGHT = 48, 32
WAN21_MESSAGE = ("got the Wan 2.1 VAE (16 latent channels); Lance needs the Wan 2.2 VAE (48 latent channels): load "
                 "Wan2.2_VAE.pth or wan2.2_vae.safetensors with ComfyUI's Load VAE node")
SIDE_RULE = "a multiple of 16 between 16 and 1024 px (Lance's latent is 16x smaller and at most 64 wide)"
FRAMES_RULE = "(1 = one image; the Wan 2.2 VAE packs 4 frames per latent frame after the first)"
BROKEN = {"Truncated_Lance": truncated_copy, "Corrupt_Lance": corrupt_copy, "Incomplete_Lance": config_only_copy}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_reliability_server(tmp_path_factory, "reliability_inputs") as (running, models):
        for name, make in BROKEN.items():
            make(models.image, running.models_dir / "lance" / name)
        write_wan21_vae(running.models_dir / "vae" / WAN21_VAE_NAME)
        for name, data in media_files().items():
            upload(running.url, name, data)
        yield running


# --------------------------------------------------------------------------------------------- media


def gradient() -> np.ndarray:
    x = np.linspace(0, 255, WIDTH)[None, :]
    y = np.linspace(0, 255, HEIGHT)[:, None]
    return np.stack(np.broadcast_arrays(x, y, 255 - x), axis=-1).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png16_rgb(array8: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of the 8-bit ``array8`` (each value v stored as v * 257, the same
    colour); PIL cannot write one, so the chunks are written here."""
    height, width, _ = array8.shape
    rows = (array8.astype(">u2") * 257).reshape(height, width * 3).tobytes()
    raw = b"".join(b"\x00" + rows[r * width * 6:(r + 1) * width * 6] for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def composited_half_alpha(rgb: np.ndarray) -> np.ndarray:
    """What Lance sees for ``rgb`` with alpha 0.5, computed by the library's own conversion of the RGBA
    tensor the test node makes (LoadImage gives uint8 / 255 floats)."""
    rgba = torch.cat([torch.from_numpy(rgb).float() / 255, torch.full((HEIGHT, WIDTH, 1), 0.5)], dim=-1)
    return np.asarray(rgb_frames(rgba[None])[0])


def media_files() -> dict[str, bytes]:
    rgb = gradient()
    return {"rgb.png": png(rgb), "rgb16.png": png16_rgb(rgb), "gray.png": png(rgb[..., 0]),
            "half_alpha_on_white.png": png(composited_half_alpha(rgb))}


def upload(url: str, name: str, data: bytes) -> None:
    response = requests.post(f"{url}/upload/image", files={"image": (name, data, "image/png")},
                             data={"overwrite": "true", "type": "input"}, timeout=60)
    response.raise_for_status()


# ----------------------------------------------------------------------------------------------- helpers


def rejected(server, graph: Graph) -> dict:
    with pytest.raises(PromptRejected) as refused:
        server.post_prompt(graph.prompt)
    return refused.value.body


def custom_validation_messages(body: dict, node_id: str) -> set[str]:
    """The messages of one node's ``validate_inputs`` (ComfyUI repeats it once per input it names)."""
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"][node_id]["errors"]
    assert {e["type"] for e in errors} == {"custom_validation_failed"}
    return {e["details"].split(" - ", 1)[1] for e in errors}


def failed(server, graph: Graph) -> tuple[dict, list]:
    """Run ``graph``, which must fail; returns its execution_error data and the websocket messages."""
    entry, messages = server.run_prompt(graph.prompt, timeout=TIMEOUT_S)
    assert entry["status"]["status_str"] == "error", entry["status"]
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    # ComfyUI appends its own tips after a newline (none for these errors).
    assert error["exception_message"].endswith("\n")
    return error | {"exception_message": error["exception_message"][:-1]}, messages


def ran(messages: list) -> list[str]:
    """The node ids the server started, in order."""
    return [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
            and m["data"]["node"] is not None]


def progressed(messages: list) -> set[str]:
    """The node ids that reported sampling progress."""
    return {m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "progress"}


# --------------------------------------------------------------------------- answered by HTTP 400 (not queued)


@pytest.mark.parametrize("width, height, frames, message", [
    (100, 32, 1, f"width must be {SIDE_RULE}, got 100; use 96"),
    (32, 1040, 1, f"height must be {SIDE_RULE}, got 1040; use 1024"),
    (32, 32, 6, f"frames must be 4k+1 between 1 and 121 {FRAMES_RULE}, got 6; use 5"),
    (32, 32, 125, f"frames must be 4k+1 between 1 and 121 {FRAMES_RULE}, got 125; use 121"),
])
def test_latent_sizes_lance_cannot_use_are_refused_at_queue_time(server, width, height, frames, message):
    graph = Graph()
    latent = graph.empty_latent(width, height, frames)
    graph.save_latent(latent)
    assert custom_validation_messages(rejected(server, graph), latent[0]) == {message}


def test_an_image_to_video_of_one_frame_is_refused_at_queue_time(server):
    graph = Graph()
    latent = graph.add("LanceImageToVideoLatent", vae=graph.vae(), start_image=graph.load_image("rgb.png"),
                       frames=1, resolution="image_256res")
    graph.save_latent([latent, 0])
    assert custom_validation_messages(rejected(server, graph), latent) == {
        f"frames must be 4k+1 between 5 and 121 {FRAMES_RULE}, got 1; use 5"}


@pytest.mark.parametrize("field", ["prompt", "instruction", "question"])
def test_empty_text_is_refused_at_queue_time(server, field):
    graph = Graph()
    model = graph.loader()
    if field == "prompt":
        node = graph.text_encode(model, prompt="  \n ")[0]
        graph.save_latent(graph.sampler(model, [node, 0], graph.empty_latent()))
    elif field == "instruction":
        cond, latent = graph.edit(model, graph.vae(), graph.load_image("rgb.png"), instruction="")
        node = cond[0]
        graph.save_latent(graph.sampler(model, cond, latent))
    else:
        node = graph.caption(model, graph.load_image("rgb.png"), question=" ")
    assert custom_validation_messages(rejected(server, graph), node) == {
        f"{field} is empty (or only spaces); Lance needs text here: type it into the {field} box"}


@pytest.mark.parametrize("name", ["../lance/Lance_3B", "Lance_3B/../Lance_3B_Video", "/etc", "..", "Not_There"])
def test_a_checkpoint_name_outside_the_listed_folders_is_refused(server, name):
    graph, _ = t2i()
    graph.prompt["1"]["inputs"]["checkpoint"] = name
    (message,) = custom_validation_messages(rejected(server, graph), "1")
    # The searched folders: this server's, then ComfyUI's own models/lance.
    searched = f"({server.models_dir / 'lance'}, "
    if name == "Not_There":
        listed = ", ".join(["Lance_3B", "Lance_3B_Video", *sorted(BROKEN)])
        assert message.startswith(f"checkpoint 'Not_There' is not in the lance model folders {searched}")
        assert message.endswith(f"/models/lance); pick one of: {listed}")
    else:
        assert message.startswith(f"'{name}' is not a folder name: Lance loads only folders directly inside the lance "
                                  f"model folders {searched}")
        assert message.endswith("/models/lance); pick one of the listed names")


def combo_graph(node: str, value: str) -> tuple[Graph, str]:
    """A graph whose ``node`` gets ``value`` for one of its combos; returns it and that node's id."""
    graph = Graph()
    model = graph.loader()
    image = graph.load_image("rgb.png")
    if node == "LanceTextEncode":
        cond = graph.text_encode(model, task=value)
        graph.save_latent(graph.sampler(model, cond, graph.empty_latent()))
        return graph, cond[0]
    if node == "LanceSampler":
        sampler = graph.sampler(model, graph.text_encode(model), graph.empty_latent())
        graph.prompt[sampler[0]]["inputs"]["renorm"] = value
        graph.save_latent(sampler)
        return graph, sampler[0]
    if node == "LanceEditEncode":
        cond, latent = graph.edit(model, graph.vae(), image, kind=value)
        graph.save_latent(graph.sampler(model, cond, latent))
        return graph, cond[0]
    captioner = graph.caption(model, image)
    graph.prompt[captioner]["inputs"]["resolution"] = value
    return graph, captioner


@pytest.mark.parametrize("node, value, message", [
    ("LanceTextEncode", "image_to_text", "task must be one of text_to_image, text_to_video, got 'image_to_text'"),
    ("LanceSampler", "Global", "renorm must be one of global, channel, none, got 'Global'"),
    ("LanceEditEncode", "clip", "kind must be one of image, video, got 'clip'"),
    ("LanceCaptioner", "video_1080p", "resolution must be one of image_256res, video_192p, image_512res, "
                                      "image_768res, video_360p, video_480p, got 'video_1080p'"),
])
def test_a_combo_value_outside_its_options_is_refused_at_queue_time(server, node, value, message):
    # ComfyUI 0.3.75 checks only V1 combos against their options; the nodes check their own.
    graph, node_id = combo_graph(node, value)
    assert message in custom_validation_messages(rejected(server, graph), node_id)


# ------------------------------------------------------------------- answered by the first node that can tell


def test_a_prompt_longer_than_the_context_fails_before_the_model_runs(server):
    graph, sampler = t2i(prompt=" ".join(["fox"] * 1200))
    error, messages = failed(server, graph)
    assert error["node_type"] == "LanceTextEncode" and error["exception_type"] == "ValueError"
    message = error["exception_message"]
    assert message.startswith("prompt is ") and message.endswith(
        " fit before position 1000, where Lance places image tokens; shorten it")
    tokens, allowed = (int(word) for word in message.split() if word.isdigit() and word != "1000")
    assert tokens > allowed > 0
    assert sampler not in ran(messages)


def test_a_video_task_on_the_image_checkpoint_names_the_checkpoint_to_load(server):
    graph = Graph()
    model = graph.loader("Lance_3B")
    graph.save_latent(graph.sampler(model, graph.text_encode(model, task="text_to_video"),
                                    graph.empty_latent(frames=5)))
    error, _ = failed(server, graph)
    assert (error["node_type"], error["exception_message"]) == (
        "LanceTextEncode", "task text_to_video needs the video model (Lance_3B_Video), but Lance_3B is the image "
                           "model; load Lance_3B_Video in Lance Checkpoint Loader")


def test_a_latent_wider_than_lance_places_fails_before_sampling(server):
    graph = Graph()
    model = graph.loader()
    wide = graph.add("LatentUpscaleBy", samples=graph.empty_latent(1024, 1024), upscale_method="nearest-exact",
                     scale_by=65 / 64)
    sampler = graph.sampler(model, graph.text_encode(model), [wide, 0])
    graph.save_latent(sampler)
    error, messages = failed(server, graph)
    assert sampler[0] not in progressed(messages)
    assert (error["node_type"], error["exception_message"]) == (
        "LanceSampler", "Lance Sampler: the latent is 65x65 (1040x1040 px) but Lance places at most 64 latent "
                        "pixels per side (1024 px); larger sizes would reuse positions and repeat content; make the "
                        "latent at most 1024x1024 px")


@pytest.mark.parametrize("frames", [1, 3])
def test_a_video_edit_of_too_few_frames_fails_before_encoding(server, frames):
    graph = Graph()
    model = graph.loader("Lance_3B_Video")
    clip = [graph.add("RepeatImageBatch", image=graph.load_image("rgb.png"), amount=frames), 0]
    cond, latent = graph.edit(model, graph.vae(), clip, kind="video")
    graph.save_latent(graph.sampler(model, cond, latent))
    error, _ = failed(server, graph)
    assert (error["node_type"], error["exception_message"]) == (
        "LanceEditEncode", f"kind 'video' needs the clip's frames (at least 5 images in the batch), got {frames}; give "
                           f"a longer clip, or set kind to 'image' for a still image")


@pytest.mark.parametrize("task", ["image_to_video", "image_edit"])
def test_a_wan21_vae_is_refused_before_any_encoding(server, task):
    graph = Graph()
    image = graph.load_image("rgb.png")
    vae = graph.vae(WAN21_VAE_NAME)
    if task == "image_to_video":
        node = graph.add("LanceImageToVideoLatent", vae=vae, start_image=image, frames=5,
                         resolution="image_256res")
        graph.save_latent([node, 0])
    else:
        model = graph.loader("Lance_3B")
        cond, latent = graph.edit(model, vae, image)
        node = cond[0]
        graph.save_latent(graph.sampler(model, cond, latent))
    error, _ = failed(server, graph)
    assert error["node_id"] == node and error["exception_message"] == WAN21_MESSAGE
    assert error["exception_type"].endswith("WrongVAEError")


@pytest.mark.parametrize("name, detail", [
    ("Truncated_Lance", "truncated or corrupt safetensors file: "),
    ("Corrupt_Lance", "truncated or corrupt safetensors file: the header is not valid JSON"),
    ("Incomplete_Lance", "missing file; the model download is incomplete, fetch this file again"),
])
def test_a_broken_checkpoint_file_says_to_fetch_it_again(server, name, detail):
    graph, sampler = t2i()
    graph.prompt["1"]["inputs"]["checkpoint"] = name
    error, messages = failed(server, graph)
    weights = server.models_dir / "lance" / name / "model.safetensors"
    assert error["node_type"] == "LanceCheckpointLoader"
    assert error["exception_message"].startswith(f"{weights}: {detail}")
    if name != "Incomplete_Lance":
        assert error["exception_message"].endswith("; download it again")
    assert not {"LanceTextEncode", "LanceSampler"} & {graph.prompt[n]["class_type"] for n in ran(messages)}


# --------------------------------------------------------------------- image layouts Lance converts instead


def edited_latent(server, image_node) -> torch.Tensor:
    """The 1-step edit of an image (given as a function adding its nodes to a graph) as the saved latent."""
    graph = Graph()
    model = graph.loader("Lance_3B")
    cond, latent = graph.edit(model, graph.vae(), image_node(graph))
    saver = graph.save_latent(graph.sampler(model, cond, latent), prefix="reliability/layouts")
    entry, _ = server.run_prompt(graph.prompt, timeout=TIMEOUT_S)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (ref,) = entry["outputs"][saver]["latents"]
    data = requests.get(f"{server.url}/view", params=ref, timeout=60)
    data.raise_for_status()
    return load_safetensors(data.content)["latent_tensor"]


def layout(name: str, kind: str, alpha: float = 1.0):
    return lambda graph: [graph.add("LanceTestImageLayout", image=graph.load_image(name), layout=kind,
                                    alpha=alpha), 0]


def loaded(name: str):
    return lambda graph: graph.load_image(name)


@pytest.mark.parametrize("case, given, equivalent", [
    ("opaque RGBA", layout("rgb.png", "rgba"), loaded("rgb.png")),
    ("half-transparent RGBA", layout("rgb.png", "rgba", alpha=0.5), loaded("half_alpha_on_white.png")),
    ("one gray channel", layout("gray.png", "gray"), loaded("gray.png")),
    ("16-bit PNG", loaded("rgb16.png"), loaded("rgb.png")),
])
def test_image_layouts_are_converted_like_their_rgb_equivalent(server, case, given, equivalent):
    assert torch.equal(edited_latent(server, given), edited_latent(server, equivalent)), case


def test_the_layout_comparison_tells_different_images_apart(server):
    assert not torch.equal(edited_latent(server, loaded("rgb.png")),
                           edited_latent(server, loaded("half_alpha_on_white.png")))
