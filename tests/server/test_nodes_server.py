"""The Lance nodes inside a real ComfyUI, driven through /prompt, /history, /interrupt and the websocket.

Each task runs as an API-format graph on the tiny model set and is compared with what
``python -m lance_model run`` computes for the same settings: its own code path (argument parsing,
model loading, ``pipeline.run_task``) runs in the test process. The final latents (saved by SaveLatent)
must be equal bit for bit and the answers identical; decoded frames (ComfyUI's VAE Decode vs the
reference's bf16 decode) are bounded. The run's decode is skipped where the 256-px presets make it
slow: a bf16 decode of the official-width VAE takes over a minute per clip on two CPU cores.
"""
from __future__ import annotations

import importlib
import io
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from api_graph import ApiGraph
from comfy_client import preview_frame, progress_values
from example_media import IMAGE_NAME, VIDEO_NAME, mp4_bytes, png_bytes, upload_example_media
from PIL import Image
from safetensors.torch import load as load_safetensors

from lance_model import pipeline
from lance_model.checkpoint import VaeCheckpoint
from lance_model.cli import build_parser
from lance_model.comfy_lookup import import_comfy_module
from lance_model.commands.run import build_request, load_models
from lance_model.vae import decode_to_uint8, load_wan22_vae
from lance_model.vae_latent import lance_latent_to_comfy

TIMEOUT_S = 600
STEPS = 3
SEED = 42  # the command line's default, which also seeds the VAE posterior of i2v / edit conditions
PROMPT = "The red square slides to the right while the yellow sun glows. fixed shot."
INSTRUCTION = "Make the sky pink and add a white moon."
QUESTION = "What color is the square in the center of the picture?"
MAX_NEW_TOKENS = 8
IMAGE_PRESET, VIDEO_PRESET = "image_256res", "video_192p"
# ComfyUI's VAE Decode (fp32 on the CPU, SaveImage truncates to uint8) vs the reference's bf16 decode.
DECODE_MEAN_LEVELS = 2.0
# A received preview (JPEG at quality 95 of the upscaled Latent2RGB picture) vs the same picture made here.
# On the tiny model the last step's preview is 0.4 levels off, the step before it 1.7.
PREVIEW_MEAN_LEVELS = 1.0


# ------------------------------------------------------------------------------------------------ graphs


class Graph(ApiGraph):
    """The nodes of the graphs compared with the command line; ``sampler`` and ``edit`` return node ids."""

    def sampler(self, model, cond, latent, **overrides) -> str:
        settings = dict(seed=SEED, steps=STEPS, cfg=4.0, shift=3.5, cfg_start=0.4, cfg_end=1.0, renorm="global",
                        noise="comfy") | overrides
        return self.add("LanceSampler", model=model, cond=cond, latent=latent, **settings)

    def text_encode(self, model, task: str) -> list:
        return [self.add("LanceTextEncode", model=model, prompt=PROMPT, task=task), 0]

    def edit(self, model, vae, image, kind: str, resolution: str, fps=12.0) -> str:
        return self.add("LanceEditEncode", model=model, vae=vae, image=image, instruction=INSTRUCTION, kind=kind,
                        fps=fps, resolution=resolution)

    def save_latent(self, samples: list, prefix: str) -> str:
        return self.add("SaveLatent", samples=samples, filename_prefix=prefix)

    def decode(self, vae, samples: list) -> list:
        return [self.add("VAEDecode", samples=samples, vae=vae), 0]

    def save_images(self, images: list, prefix: str) -> str:
        return self.add("SaveImage", images=images, filename_prefix=prefix)

    def load_image(self) -> list:
        return [self.add("LoadImage", image=IMAGE_NAME), 0]

    def load_clip(self) -> tuple[list, list]:
        components = self.add("GetVideoComponents", video=[self.add("LoadVideo", file=VIDEO_NAME), 0])
        return [components, 0], [components, 2]


def run(comfy_server, graph: Graph) -> tuple[dict, list]:
    entry, messages = comfy_server.run_prompt(graph.prompt, timeout=TIMEOUT_S)
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "success", errors
    return entry, messages


def fetch(comfy_server, ref: dict) -> bytes:
    query = urllib.parse.urlencode({key: ref[key] for key in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{comfy_server.url}/view?{query}", timeout=60) as response:
        return response.read()


def saved_latent(comfy_server, entry: dict, node_id: str) -> torch.Tensor:
    (ref,) = entry["outputs"][node_id]["latents"]
    return load_safetensors(fetch(comfy_server, ref))["latent_tensor"]


def saved_frames(comfy_server, entry: dict, node_id: str) -> torch.Tensor:
    refs = entry["outputs"][node_id]["images"]
    return torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(fetch(comfy_server, ref))).convert("RGB"))
                                      for ref in refs]))


# --------------------------------------------------------------------------------------------- reference


@pytest.fixture(scope="module")
def served(comfy_server, served_tiny_models) -> Path:
    upload_example_media(comfy_server.url)
    return served_tiny_models


@pytest.fixture(scope="module")
def media_files(served, tmp_path_factory) -> dict:
    """The uploaded inputs as files for the command line."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / IMAGE_NAME).write_bytes(png_bytes())
    (folder / VIDEO_NAME).write_bytes(mp4_bytes())
    return {"image": str(folder / IMAGE_NAME), "video": str(folder / VIDEO_NAME)}


@pytest.fixture(scope="module")
def reference_vae(served):
    """The VAE as the command line loads it (bf16 module), for decoding its latents."""
    return load_wan22_vae(VaeCheckpoint.open(served / "vae" / "Wan2.2_VAE.pth").state_dict, "cpu", torch.bfloat16)


def run_command(served: Path, checkpoint: str, *argv: str, decode: bool = False) -> pipeline.TaskResult:
    """``python -m lance_model run`` on the served model files, in this process; ``decode=False`` skips
    only its final VAE decode."""
    args = build_parser().parse_args(["run", "--checkpoint", str(served / "lance" / checkpoint), "--vae",
                                      str(served / "vae" / "Wan2.2_VAE.pth"), "--steps", str(STEPS), "--seed",
                                      str(SEED), "--out", "unused", *argv])
    with pytest.MonkeyPatch.context() as patch:
        if not decode:
            patch.setattr(pipeline, "decode_to_uint8", lambda vae, latent: None)
        return pipeline.run_task(load_models(args), build_request(args))


def assert_latent_equal(samples: torch.Tensor, result: pipeline.TaskResult, record_property, task: str) -> None:
    expected = lance_latent_to_comfy(result.final_latent)
    record_property(f"{task} final latent max |diff|", float((samples - expected).abs().max()))
    assert samples.shape == expected.shape and torch.equal(samples, expected)


def step_previews(messages: list, node: str) -> list[tuple[int | None, Image.Image]]:
    """Every latent preview received, with the progress value of ``node`` reported just before it."""
    previews, step = [], None
    for message in messages:
        if isinstance(message, bytes):
            frame = preview_frame(message)
            picture = Image.open(io.BytesIO(frame.data))
            assert picture.format == frame.format
            previews.append((step, picture.convert("RGB")))
        elif message["type"] == "progress":
            step = message["data"]["value"] if message["data"]["node"] == node else None
    return previews


def latent2rgb_picture(latent: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """ComfyUI's Latent2RGB preview of the first frame of Lance latent ``latent`` [t, h, w, 48], scaled to
    ``size`` as the server scales previews."""
    wan22 = import_comfy_module("comfy.latent_formats").Wan22()
    previewer = importlib.import_module("latent_preview").Latent2RGBPreviewer(
        wan22.latent_rgb_factors, wan22.latent_rgb_factors_bias, wan22.latent_rgb_factors_reshape)
    picture = previewer.decode_latent_to_preview(latent.float().movedim(-1, 0).unsqueeze(0))
    return picture.resize(size, Image.Resampling.BILINEAR)


def assert_decode_close(frames: torch.Tensor, latent: torch.Tensor, reference_vae, record_property, task) -> None:
    expected = decode_to_uint8(reference_vae, latent)
    levels = (frames.float() - expected.float()).abs()
    record_property(f"{task} decoded mean |diff| levels", float(levels.mean()))
    record_property(f"{task} decoded max |diff| levels", float(levels.max()))
    assert frames.shape == expected.shape and levels.mean() <= DECODE_MEAN_LEVELS


# ------------------------------------------------------------------------------------------------- tests


def test_every_node_and_input_is_documented_and_ids_are_the_packs_own(comfy_server):
    info = comfy_server.get_json("/object_info")
    ours = {node_id: node for node_id, node in info.items() if node["python_module"] == comfy_server.python_module}
    assert len(ours) == 7 and all(node_id.startswith("Lance") for node_id in ours)
    for node_id, node in ours.items():
        assert node["description"] and node["category"].startswith("Lance/"), node_id
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        missing = [name for name, spec in inputs.items() if len(spec) < 2 or not spec[1].get("tooltip")]
        assert not missing, f"{node_id}: inputs without tooltip {missing}"
        assert all(node["output_tooltips"]) and all(node["output_name"]), node_id


def test_text_to_image_equals_the_command_line_and_reports_every_step_with_a_preview(comfy_server, served,
                                                                                     reference_vae, record_property):
    graph = Graph()
    model = graph.loader("Lance_3B")
    latent = [graph.add("LanceEmptyLatent", width=64, height=48, frames=1), 0]
    sampler = graph.sampler(model, graph.text_encode(model, "text_to_image"), latent)
    latent_out = graph.save_latent([sampler, 0], "lance_t2i/latent")
    images = graph.save_images(graph.decode(graph.vae(), [sampler, 0]), "lance_t2i/frame")
    entry, messages = run(comfy_server, graph)

    steps = progress_values(messages, sampler)
    assert steps == list(range(1, STEPS + 1))
    previews = step_previews(messages, sampler)
    assert [step for step, _ in previews] == steps
    sizes = {picture.size for _, picture in previews}
    record_property("t2i preview sizes", sorted(sizes))
    record_property("t2i preview bytes", [len(m) for m in messages if isinstance(m, bytes)])
    assert len(sizes) == 1 and all(abs(width / height - 64 / 48) < 1 / height for width, height in sizes)
    result = run_command(served, "Lance_3B", "--task", "t2i", "--prompt", PROMPT, "--height", "48", "--width", "64",
                         decode=True)
    # The last step's estimate of the clean latent is the result itself.
    expected = np.asarray(latent2rgb_picture(result.final_latent, previews[-1][1].size), dtype=np.float32)
    levels = [float(np.abs(np.asarray(picture, dtype=np.float32) - expected).mean()) for _, picture in previews]
    record_property("t2i preview mean |diff| levels to the final latent's, per step", levels)
    assert levels[-1] <= PREVIEW_MEAN_LEVELS
    assert_latent_equal(saved_latent(comfy_server, entry, latent_out), result, record_property, "t2i")
    assert_decode_close(saved_frames(comfy_server, entry, images), result.final_latent, reference_vae,
                        record_property, "t2i")


def test_text_to_video_equals_the_command_line(comfy_server, served, reference_vae, record_property):
    graph = Graph()
    model = graph.loader("Lance_3B_Video")
    latent = [graph.add("LanceEmptyLatent", width=48, height=32, frames=5), 0]
    sampler = graph.sampler(model, graph.text_encode(model, "text_to_video"), latent)
    latent_out = graph.save_latent([sampler, 0], "lance_t2v/latent")
    images = graph.save_images(graph.decode(graph.vae(), [sampler, 0]), "lance_t2v/frame")
    entry, _ = run(comfy_server, graph)
    result = run_command(served, "Lance_3B_Video", "--task", "t2v", "--prompt", PROMPT, "--height", "32", "--width",
                         "48", "--frames", "5", decode=True)
    assert_latent_equal(saved_latent(comfy_server, entry, latent_out), result, record_property, "t2v")
    assert_decode_close(saved_frames(comfy_server, entry, images), result.final_latent, reference_vae,
                        record_property, "t2v")


def test_image_to_video_equals_the_command_line(comfy_server, served, media_files, record_property):
    graph = Graph()
    model = graph.loader("Lance_3B_Video")
    latent = [graph.add("LanceImageToVideoLatent", vae=graph.vae(), start_image=graph.load_image(), frames=5,
                        resolution=IMAGE_PRESET), 0]
    sampler = graph.sampler(model, graph.text_encode(model, "text_to_video"), latent)
    latent_out = graph.save_latent([sampler, 0], "lance_i2v/latent")
    entry, _ = run(comfy_server, graph)
    result = run_command(served, "Lance_3B_Video", "--task", "i2v", "--prompt", PROMPT, "--image",
                         media_files["image"], "--frames", "5", "--resolution", IMAGE_PRESET)
    assert_latent_equal(saved_latent(comfy_server, entry, latent_out), result, record_property, "i2v")


def test_video_edit_equals_the_command_line(comfy_server, served, media_files, record_property):
    graph = Graph()
    frames, fps = graph.load_clip()
    model = graph.loader("Lance_3B_Video")
    edit = graph.edit(model, graph.vae(), frames, "video", VIDEO_PRESET, fps=fps)
    sampler = graph.sampler(model, [edit, 0], [edit, 1])
    latent_out = graph.save_latent([sampler, 0], "lance_video_edit/latent")
    entry, _ = run(comfy_server, graph)
    result = run_command(served, "Lance_3B_Video", "--task", "video_edit", "--prompt", INSTRUCTION, "--video",
                         media_files["video"], "--resolution", VIDEO_PRESET)
    assert_latent_equal(saved_latent(comfy_server, entry, latent_out), result, record_property, "video_edit")


@pytest.mark.parametrize("kind, checkpoint, preset", [("image", "Lance_3B", IMAGE_PRESET),
                                                      ("video", "Lance_3B_Video", VIDEO_PRESET)])
def test_captioning_equals_the_command_line(comfy_server, served, media_files, record_property, kind, checkpoint,
                                            preset):
    graph = Graph()
    image, fps = graph.load_clip() if kind == "video" else (graph.load_image(), 12.0)
    captioner = graph.add("LanceCaptioner", model=graph.loader(checkpoint), image=image, question=QUESTION, kind=kind,
                          fps=fps, resolution=preset, instruction="", max_new_tokens=MAX_NEW_TOKENS, sampling="off",
                          temperature=0.7, top_p=0.9, seed=0)
    entry, messages = run(comfy_server, graph)
    (text,) = entry["outputs"][captioner]["text"]
    result = run_command(served, checkpoint, "--task", f"x2t_{kind}", "--prompt", QUESTION, f"--{kind}",
                         media_files[kind], "--resolution", preset, "--max-new-tokens", str(MAX_NEW_TOKENS))
    record_property(f"x2t_{kind} answer", text)
    assert text == result.answer.text
    shown = [m["data"]["output"] for m in messages if isinstance(m, dict) and m["type"] == "executed"
             and m["data"]["node"] == captioner]
    assert shown == [{"text": [text]}]


def test_a_three_round_edit_chain_runs_as_one_prompt(comfy_server, served, media_files, record_property):
    """Each round edits the decoded result of the previous one; the first round equals the command line."""
    graph = Graph()
    model, vae, image = graph.loader("Lance_3B"), graph.vae(), graph.load_image()
    rounds = []
    for index in range(3):
        edit = graph.edit(model, vae, image, "image", IMAGE_PRESET)
        sampler = graph.sampler(model, [edit, 0], [edit, 1])
        rounds.append((edit, sampler, graph.save_latent([sampler, 0], f"lance_chain/round{index}")))
        if index < 2:
            image = graph.decode(vae, [sampler, 0])
    entry, messages = run(comfy_server, graph)

    order = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
             and m["data"]["node"] is not None]
    decodes = [node_id for node_id, node in graph.prompt.items() if node["class_type"] == "VAEDecode"]
    chain = [rounds[0][0], rounds[0][1], decodes[0], rounds[1][0], rounds[1][1], decodes[1], rounds[2][0], rounds[2][1]]
    assert [node_id for node_id in order if node_id in chain] == chain
    latents = [saved_latent(comfy_server, entry, saved) for _, _, saved in rounds]
    assert len({tuple(latent.shape) for latent in latents}) == 1
    assert not torch.equal(latents[0], latents[1]) and not torch.equal(latents[1], latents[2])
    result = run_command(served, "Lance_3B", "--task", "image_edit", "--prompt", INSTRUCTION, "--image",
                         media_files["image"], "--resolution", IMAGE_PRESET)
    assert_latent_equal(latents[0], result, record_property, "image_edit")


def t2i_graph(prompt: str, seed: int, steps: int, side: int = 32) -> tuple[Graph, dict]:
    graph = Graph()
    model = graph.loader("Lance_3B")
    encode = graph.add("LanceTextEncode", model=model, prompt=prompt, task="text_to_image")
    latent = graph.add("LanceEmptyLatent", width=side, height=side, frames=1)
    sampler = graph.sampler(model, [encode, 0], [latent, 0], seed=seed, steps=steps)
    graph.save_latent([sampler, 0], "lance_t2i_small/latent")
    return graph, {"loader": model[0], "encode": encode, "latent": latent, "sampler": sampler}


def test_a_new_seed_reuses_the_cached_prompt_encoding(comfy_server, served):
    prompt = "A small white cat sits on a wooden table next to a blue cup."
    first, ids = t2i_graph(prompt, seed=1, steps=2)
    run(comfy_server, first)
    again, _ = t2i_graph(prompt, seed=2, steps=2)
    entry, messages = run(comfy_server, again)
    cached = {node for kind, data in entry["status"]["messages"] if kind == "execution_cached"
              for node in data["nodes"]}
    assert {ids["loader"], ids["encode"], ids["latent"]} <= cached and ids["sampler"] not in cached
    executed = {m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"}
    assert ids["encode"] not in executed and ids["sampler"] in executed


def test_interrupt_stops_a_long_sampler_and_the_next_prompt_succeeds(comfy_server, served, record_property):
    steps = 1000  # the widget's maximum; minutes of work at this size
    graph, ids = t2i_graph("A red fox jumps over the lazy dog in the snow.", seed=5, steps=steps, side=256)
    entry, messages = comfy_server.run_and_interrupt(graph.prompt, ids["sampler"], "progress", timeout=TIMEOUT_S)
    values = progress_values(messages, ids["sampler"])
    assert entry["status"]["status_str"] == "error"
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert [data["node_id"] for data in interrupted] == [ids["sampler"]]
    record_property("steps reported before the interrupt took effect", len(values))
    assert values == list(range(1, len(values) + 1)) and len(values) < steps // 10
    short, _ = t2i_graph("A red fox jumps over the lazy dog in the snow.", seed=5, steps=2)
    run(comfy_server, short)
