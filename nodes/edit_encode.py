"""Lance Edit Encode: source image / clip + instruction -> LANCE_COND and the target LATENT."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..lance_model.config import LATENT
from ..lance_model.generation import EditSource, encode_prompt
from ..lance_model.pipeline import TaskRequest, check_request
from ..lance_model.preprocess import RESOLUTION_PRESETS, resolution_preset, vae_input
from ..lance_model.prompts import generation_system_prompt
from ..lance_model.vae import require_wan22_vae
from ..lance_model.vision_tokens import encode_vision
from . import NODE_CLASSES, comfy_runtime
from .condition_device import condition_on
from .latents import empty_latent_like
from .media_inputs import FPS_TOOLTIP, MEDIA_KINDS, media_frames
from .model_handle import GEN, UND, VIT
from .progress import StageProgress
from .sockets import LanceCondSocket, LanceModelSocket
from .source_encoding import encode_clean_latent
from .validation import first_error, option_error, prompt_length_error, text_error

TASKS = {"image": "image_edit", "video": "video_edit"}
# The VAE groups frames 1 + 4k: the shortest clip that is one is 5 frames.
VIDEO_EDIT_MIN_FRAMES = LATENT.temporal_factor + 1


class LanceEditEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceEditEncode",
            display_name="Lance Edit Encode",
            category="Lance/conditioning",
            description="Encodes the source (vision tower + VAE) and the edit instruction once; Lance Sampler then "
                        "generates the edited image or clip at the source's bucket size. Chain edits by decoding "
                        "the result and feeding it into the next Edit Encode.",
            inputs=[
                LanceModelSocket.Input("model", tooltip="Lance_3B for image edits, Lance_3B_Video for video edits; "
                                                        "needs the vision tower."),
                io.Vae.Input("vae", tooltip="The Wan 2.2 VAE (Wan2.2_VAE.pth or wan2.2_vae.safetensors) from Load "
                                            "VAE."),
                io.Image.Input("image", tooltip="The source: one image, or the clip's frames (kind video)."),
                io.String.Input("instruction", multiline=True,
                                tooltip="One short imperative sentence works best, e.g. 'Change the car's colour "
                                        "to red.'"),
                io.Combo.Input("kind", options=list(MEDIA_KINDS), default="image",
                               tooltip="image: one image (image_edit). video: a clip (video_edit, 4k+1 frames "
                                       "after resampling, at least 5)."),
                io.Float.Input("fps", default=12.0, min=1.0, max=240.0, step=0.001, tooltip=FPS_TOOLTIP),
                io.Combo.Input("resolution", options=list(RESOLUTION_PRESETS), default="image_768res",
                               tooltip="Bucket preset: the source is centre-cropped to the nearest of six aspect "
                                       "ratios with about this area. The reference uses image_768res for images "
                                       "and video_480p for video."),
            ],
            outputs=[
                LanceCondSocket.Output(display_name="cond", tooltip="The encoded source and instruction, for Lance "
                                                                    "Sampler."),
                io.Latent.Output(display_name="latent", tooltip="The empty target: zeros of the source's latent size "
                                                                "[1, 48, t, h, w], for Lance Sampler."),
            ],
        )

    @classmethod
    def validate_inputs(cls, instruction, kind, resolution):
        return first_error(text_error("instruction", instruction), option_error("kind", kind, MEDIA_KINDS),
                           option_error("resolution", resolution, RESOLUTION_PRESETS))

    @classmethod
    def execute(cls, model, vae, image: torch.Tensor, instruction: str, kind: str, fps: float,
                resolution: str) -> io.NodeOutput:
        task = TASKS[kind]
        model.require_variant(kind, f"kind {kind}")
        model.require_vision_tower("Lance Edit Encode")
        require_wan22_vae(vae)  # before the vision tower runs, not after
        media = media_frames(image, kind, fps, min_clip_frames=VIDEO_EDIT_MIN_FRAMES)
        frames = check_request(TaskRequest(task=task, prompt=instruction, media=media, resolution=resolution))
        too_long = prompt_length_error(model.tokenizer, "instruction", instruction, generation_system_prompt(task))
        if too_long:
            raise ValueError(too_long)
        preset = resolution_preset(resolution)

        progress = StageProgress(3)
        condition = None
        try:
            with progress.stage():
                model.load(VIT)
                vision = encode_vision(model.vision_tower, frames, preset.vit, device=model.device,
                                       attention=model.attention)
            with progress.stage():
                latent = encode_clean_latent(vae, vae_input(frames, preset.vae))
            with progress.stage():
                source_tokens = latent.shape[0] * latent.shape[1] * latent.shape[2]
                model.load(UND, GEN, tokens=vision.embeds.shape[0] + source_tokens)
                condition = encode_prompt(model.decoder(with_generation=True), model.tokenizer, task, instruction,
                                          EditSource(vision, latent))
            cond = condition_on(condition, comfy_runtime.intermediate_device())
            return io.NodeOutput(cond, empty_latent_like(latent))
        finally:
            # Release the compute-device caches however the node ends: the output is a copy with its own
            # cache lists (condition_on), and after an interrupt the traceback would keep them alive.
            if condition is not None:
                condition.free()


NODE_CLASSES.append(LanceEditEncode)
