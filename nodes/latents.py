"""Target latents for Lance Sampler: an empty one (t2i, t2v) and one whose first frame is a given image (i2v).

Both use ComfyUI's LATENT convention for Wan 2.2: ``{"samples": [1, 48, t, H/16, W/16]}`` holding
VAE-native (un-normalised) values, so native nodes (VAE Decode, latent previews, batch and save nodes)
understand them.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..lance_model.config import LATENT
from ..lance_model.preprocess import RESOLUTION_PRESETS, resolution_preset, vae_input
from ..lance_model.vae_latent import lance_latent_to_comfy
from . import NODE_CLASSES, comfy_runtime
from .source_encoding import encode_clean_latent
from .validation import MAX_FRAMES, MAX_SIDE, PIXELS_PER_LATENT, first_error, frames_error, option_error, side_error

I2V_MIN_FRAMES = LATENT.temporal_factor + 1
# The exact normalised first frame of an i2v latent. ``samples`` holds it converted to ComfyUI's
# un-normalised values in bf16, which does not convert back bit for bit; Lance Sampler uses this key
# while it still matches ``samples`` (other nodes may have changed the latent since).
CLEAN_FRAMES_KEY = "lance_clean_frames"


def latent_frames(frames: int) -> int:
    return (frames - 1) // LATENT.temporal_factor + 1


def zero_samples(t: int, h: int, w: int) -> torch.Tensor:
    return torch.zeros([1, LATENT.channels, t, h, w], device=comfy_runtime.intermediate_device())


def empty_latent_like(latent: torch.Tensor) -> dict:
    """The LATENT of a target with the shape of Lance latent ``latent`` [t, h, w, 48]."""
    return {"samples": zero_samples(*latent.shape[:3])}


def _frames_input(default: int, minimum: int, tooltip: str) -> io.Int.Input:
    return io.Int.Input("frames", default=default, min=minimum, max=MAX_FRAMES, step=LATENT.temporal_factor,
                        tooltip=tooltip)


class LanceEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        side = dict(min=PIXELS_PER_LATENT, max=MAX_SIDE, step=PIXELS_PER_LATENT)
        return io.Schema(
            node_id="LanceEmptyLatent",
            display_name="Lance Empty Latent",
            category="Lance/latent",
            description="An empty Wan 2.2 latent that sets the size of a text-to-image or text-to-video result.",
            inputs=[
                io.Int.Input("width", default=768, **side,
                             tooltip=f"Pixels; a multiple of {PIXELS_PER_LATENT}, at most {MAX_SIDE}. Lance was "
                                     f"trained around 768x768 for images and 848x480 for video."),
                io.Int.Input("height", default=768, **side,
                             tooltip=f"Pixels; a multiple of {PIXELS_PER_LATENT}, at most {MAX_SIDE}."),
                _frames_input(1, 1, f"1 makes an image (Lance_3B); 4k+1 up to {MAX_FRAMES} makes a video at 12 fps "
                                    f"(Lance_3B_Video): 49 = 4 s, 121 = 10 s."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="Zeros of shape [1, 48, (frames-1)/4+1, height/16, width/16].")],
        )

    @classmethod
    def validate_inputs(cls, width, height, frames):
        return first_error(side_error("width", width), side_error("height", height), frames_error(frames))

    @classmethod
    def execute(cls, width: int, height: int, frames: int) -> io.NodeOutput:
        samples = zero_samples(latent_frames(frames), height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT)
        return io.NodeOutput({"samples": samples})


class LanceImageToVideoLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceImageToVideoLatent",
            display_name="Lance Image To Video Latent",
            category="Lance/latent",
            description="The target of image-to-video: the start image, resized to the preset's bucket and "
                        "VAE-encoded, is the clean first latent frame; the sampler generates the rest. Encode "
                        "the prompt with task text_to_video.",
            inputs=[
                io.Vae.Input("vae", tooltip="The Wan 2.2 VAE (Wan2.2_VAE.pth or wan2.2_vae.safetensors) from Load "
                                            "VAE."),
                io.Image.Input("start_image", tooltip="The first frame of the video (the first image of a batch)."),
                _frames_input(61, I2V_MIN_FRAMES, f"Video length, 4k+1 from {I2V_MIN_FRAMES} to {MAX_FRAMES} "
                                                  f"(12 fps): 61 = 5 s, the reference's default."),
                io.Combo.Input("resolution", options=list(RESOLUTION_PRESETS), default="video_480p",
                               tooltip="Size preset: the image is centre-cropped to the nearest of six aspect "
                                       "ratios with about this area (video_480p: 848x480 for 16:9)."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="[1, 48, t, h, w] with the encoded image in frame 0 and a noise_mask "
                                              "that is 0 there (kept) and 1 elsewhere (generated).")],
        )

    @classmethod
    def validate_inputs(cls, frames, resolution):
        return first_error(frames_error(frames, minimum=I2V_MIN_FRAMES),
                           option_error("resolution", resolution, RESOLUTION_PRESETS))

    @classmethod
    def execute(cls, vae, start_image: torch.Tensor, frames: int, resolution: str) -> io.NodeOutput:
        clean = encode_clean_latent(vae, vae_input(start_image[:1], resolution_preset(resolution).vae))
        samples = zero_samples(latent_frames(frames), *clean.shape[1:3])
        samples[:, :, :1] = lance_latent_to_comfy(clean).to(samples.device)
        noise_mask = torch.ones_like(samples[:, :1])
        noise_mask[:, :, :1] = 0
        return io.NodeOutput({"samples": samples, "noise_mask": noise_mask,
                              CLEAN_FRAMES_KEY: clean.to(samples.device)})


NODE_CLASSES.extend([LanceEmptyLatent, LanceImageToVideoLatent])
