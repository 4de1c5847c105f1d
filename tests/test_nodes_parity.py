"""Every task through the nodes equals ``python -m lance_model run`` with the same settings (the command
runs in-process here, on the tiny model set): the same final latent bit for bit, the same answer tokens.
Decoding differs on purpose: the graph uses ComfyUI's own VAE Decode (its dtype, its numerics), the
command line the reference's bf16 decode; that difference is bounded here."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from pack_import import load_model, run_node, tiny_folders, use_lance_folders, vae  # noqa: F401
from safetensors.torch import load_file

from lance_model.cli import build_parser
from lance_model.vae_latent import comfy_latent_to_lance, lance_latent_to_comfy

STEPS = 3
SEED = 42  # the command line's default: it also seeds the VAE posterior of i2v / edit conditions
SAMPLER = dict(seed=SEED, steps=STEPS, cfg=4.0, shift=3.5, cfg_start=0.4, cfg_end=1.0, renorm="global", noise="comfy")
CAPTION = dict(fps=12.0, instruction="", max_new_tokens=12, sampling="off", temperature=0.7, top_p=0.9, seed=0)
PROMPT = "The red square slides to the right while the yellow sun glows. fixed shot."
INSTRUCTION = "Make the sky pink and add a white moon."
QUESTION = "What color is the square in the center of the picture?"
# ComfyUI's fp32 VAE Decode vs the reference's bf16 decode, in uint8 levels (tiny random VAE).
DECODE_MEAN_LEVELS = 1.5
# The input kinds of the edit and captioning tasks: kind, checkpoint, resolution preset.
KINDS = [("image", "Lance_3B", "image_256res"), ("video", "Lance_3B_Video", "video_192p")]


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_checkpoint):
    """One PNG image and a folder of five PNG frames, plus both as ComfyUI IMAGE tensors (LoadImage's /255)."""
    root = tmp_path_factory.mktemp("media")
    generator = torch.Generator().manual_seed(11)
    image = torch.randint(0, 256, (72, 120, 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(image.numpy()).save(root / "image.png")
    clip = root / "clip"
    clip.mkdir()
    frames = torch.randint(0, 256, (5, 64, 80, 3), generator=generator, dtype=torch.uint8)
    for index, frame in enumerate(frames):
        Image.fromarray(frame.numpy()).save(clip / f"frame{index}.png")
    return dict(image=root / "image.png", clip=clip, image_tensor=image[None].float() / 255,
                clip_tensor=frames.float() / 255)


def source(media: dict, kind: str) -> tuple[torch.Tensor, list[str]]:
    """The ``kind`` input as the nodes get it (an IMAGE tensor) and as the command line's arguments."""
    name = "image" if kind == "image" else "clip"
    return media[f"{name}_tensor"], [f"--{kind}", str(media[name])]


def run_cli(tmp_path: Path, checkpoint: Path, *argv: str) -> tuple[dict, str | None]:
    args = build_parser().parse_args(["run", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *argv])
    assert args.func(args) == 0
    answer = tmp_path / "answer.txt"
    text = answer.read_text(encoding="utf-8").strip() if answer.is_file() else None
    return load_file(tmp_path / "result.safetensors"), text


def sample(model, cond, latent) -> torch.Tensor:
    return run_node("LanceSampler", model=model, cond=cond, latent=latent, **SAMPLER).args[0]["samples"]


def assert_same_generation(samples: torch.Tensor, reference: dict, vae) -> None:
    assert torch.equal(samples, lance_latent_to_comfy(reference["final_latent"]))
    decoded = vae.decode(samples)
    decoded = decoded.reshape(-1, *decoded.shape[-3:])  # what VAE Decode does with a video
    levels = (decoded.mul(255).round() - reference["decoded_uint8_thwc"].float()).abs()
    assert decoded.shape == reference["decoded_uint8_thwc"].shape
    assert levels.mean() <= DECODE_MEAN_LEVELS, f"decode differs by {levels.mean():.2f} levels on average"


def test_text_to_image(tiny_folders, vae, tmp_path):
    model = load_model("Lance_3B")
    cond = run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_image").args[0]
    latent = run_node("LanceEmptyLatent", width=64, height=48, frames=1).args[0]
    reference, _ = run_cli(tmp_path, tiny_folders.image, "--task", "t2i", "--prompt", PROMPT, "--height", "48",
                           "--width", "64", "--steps", str(STEPS))
    assert_same_generation(sample(model, cond, latent), reference, vae)


def test_text_to_video(tiny_folders, vae, tmp_path):
    model = load_model("Lance_3B_Video")
    cond = run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_video").args[0]
    latent = run_node("LanceEmptyLatent", width=48, height=32, frames=5).args[0]
    reference, _ = run_cli(tmp_path, tiny_folders.video, "--task", "t2v", "--prompt", PROMPT, "--height", "32",
                           "--width", "48", "--frames", "5", "--steps", str(STEPS))
    assert_same_generation(sample(model, cond, latent), reference, vae)


def test_image_to_video(tiny_folders, vae, media, tmp_path):
    model = load_model("Lance_3B_Video")
    cond = run_node("LanceTextEncode", model=model, prompt=PROMPT, task="text_to_video").args[0]
    latent = run_node("LanceImageToVideoLatent", vae=vae, start_image=media["image_tensor"], frames=5,
                      resolution="image_256res").args[0]
    reference, _ = run_cli(tmp_path, tiny_folders.video, "--task", "i2v", "--prompt", PROMPT, "--image",
                           str(media["image"]), "--frames", "5", "--resolution", "image_256res", "--steps", str(STEPS))
    assert_same_generation(sample(model, cond, latent), reference, vae)


@pytest.mark.parametrize("kind, checkpoint, resolution", KINDS)
def test_edit(tiny_folders, vae, media, tmp_path, kind, checkpoint, resolution):
    model = load_model(checkpoint)
    image, source_args = source(media, kind)
    cond, latent = run_node("LanceEditEncode", model=model, vae=vae, image=image, instruction=INSTRUCTION, kind=kind,
                            fps=12.0, resolution=resolution).args
    reference, _ = run_cli(tmp_path, tiny_folders.root / checkpoint, "--task", f"{kind}_edit", "--prompt", INSTRUCTION,
                           *source_args, "--resolution", resolution, "--steps", str(STEPS))
    assert_same_generation(sample(model, cond, latent), reference, vae)


@pytest.mark.parametrize("kind, checkpoint, resolution", KINDS)
def test_captioning(tiny_folders, media, tmp_path, kind, checkpoint, resolution):
    model = load_model(checkpoint)
    image, source_args = source(media, kind)
    output = run_node("LanceCaptioner", model=model, image=image, question=QUESTION, kind=kind, resolution=resolution,
                      **CAPTION)
    reference, answer = run_cli(tmp_path, tiny_folders.root / checkpoint, "--task", f"x2t_{kind}", "--prompt", QUESTION,
                                *source_args, "--resolution", resolution, "--max-new-tokens", "12")
    assert output.args[0] == answer
    assert output.ui.as_dict() == {"text": (answer,)}
    assert len(reference["generated_ids"]) > 0


def test_reference_noise_reproduces_the_official_code_on_its_golden_text_to_image(monkeypatch, golden_dir):
    """noise=reference draws what the official sampler draws (on the CPU: its golden fixtures), so the graph
    lands on the reference's own latent up to bf16 kernel differences (its bf16-vs-fp32 spread is 1.4%)."""
    use_lance_folders(monkeypatch, golden_dir / "ckpt")
    reference = load_file(golden_dir / "t2i" / "tensors.safetensors")["gen.final_latent_0"].float()
    prompt = (golden_dir / "t2i" / "inputs" / "prompt.txt").read_text(encoding="utf-8").strip()
    model = load_model("Lance_tiny")
    cond = run_node("LanceTextEncode", model=model, prompt=prompt, task="text_to_image").args[0]
    latent = run_node("LanceEmptyLatent", width=96, height=64, frames=1).args[0]
    settings = dict(SAMPLER, steps=8, noise="reference")
    samples = run_node("LanceSampler", model=model, cond=cond, latent=latent, **settings).args[0]["samples"]
    generated = comfy_latent_to_lance(samples)[0].float()
    assert (generated - reference).norm() / reference.norm() < 0.02
