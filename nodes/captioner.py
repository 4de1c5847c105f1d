"""Lance Captioner: image or clip + question -> answer text (x2t_image / x2t_video)."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..lance_model.pipeline import TaskRequest, check_request
from ..lance_model.preprocess import RESOLUTION_PRESETS, resolution_preset
from ..lance_model.prompts import default_understanding_instruction
from ..lance_model.sampling import TextSettings
from ..lance_model.understanding import decode_answer, prefill_question
from ..lance_model.vision_tokens import encode_vision
from . import NODE_CLASSES
from .media_inputs import FPS_TOOLTIP, MEDIA_KINDS, media_frames
from .model_handle import UND, VIT
from .progress import TokenProgress
from .sockets import LanceModelSocket
from .validation import first_error, option_error, text_error

TASKS = {"image": "x2t_image", "video": "x2t_video"}
SAMPLING = ("off", "on")


class LanceCaptioner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceCaptioner",
            display_name="Lance Captioner",
            category="Lance/understanding",
            description="Answers a question about an image or a clip (captioning, visual QA) with Lance's "
                        "understanding expert and vision tower; the answer also shows on the node.",
            is_output_node=True,
            inputs=[
                LanceModelSocket.Input("model", tooltip="Lance_3B for images, Lance_3B_Video for clips; needs the "
                                                        "vision tower."),
                io.Image.Input("image", tooltip="One image, or the clip's frames (kind video)."),
                io.String.Input("question", multiline=True, default="Describe this image in detail.",
                                tooltip="The question or request about the image or clip."),
                io.Combo.Input("kind", options=list(MEDIA_KINDS), default="image",
                               tooltip="image: one image (x2t_image). video: a clip (x2t_video)."),
                io.Float.Input("fps", default=12.0, min=1.0, max=240.0, step=0.001, tooltip=FPS_TOOLTIP),
                io.Combo.Input("resolution", options=list(RESOLUTION_PRESETS), default="image_768res",
                               tooltip="Bucket preset of the vision tower's input; the reference uses image_768res "
                                       "for images and video_480p for video."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="System prompt. Empty: the reference's '"
                                        f"{default_understanding_instruction('image')}' (or its video twin)."),
                io.Int.Input("max_new_tokens", default=TextSettings().max_new_tokens, min=1, max=4096,
                             tooltip="Longest answer in tokens (256 in the reference); it stops earlier at the end "
                                     "of the answer."),
                io.Combo.Input("sampling", options=list(SAMPLING), default="off",
                               tooltip="off: greedy decoding, as the reference (same answer every time). on: sample "
                                       "with temperature and top_p from the seed."),
                io.Float.Input("temperature", default=0.7, min=0.01, max=2.0, step=0.01,
                               tooltip="Sampling only: lower is more focused, higher more varied."),
                io.Float.Input("top_p", default=0.9, min=0.01, max=1.0, step=0.01,
                               tooltip="Sampling only: keep the most likely tokens covering this probability mass."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Sampling only: the seed of the token draws."),
            ],
            outputs=[io.String.Output(display_name="text", tooltip="The answer, stripped.")],
        )

    @classmethod
    def validate_inputs(cls, question, kind, resolution, sampling):
        return first_error(text_error("question", question), option_error("kind", kind, MEDIA_KINDS),
                           option_error("resolution", resolution, RESOLUTION_PRESETS),
                           option_error("sampling", sampling, SAMPLING))

    @classmethod
    def execute(cls, model, image: torch.Tensor, question: str, kind: str, fps: float, resolution: str,
                instruction: str, max_new_tokens: int, sampling: str, temperature: float, top_p: float,
                seed: int) -> io.NodeOutput:
        task = TASKS[kind]
        model.require_variant(kind, f"kind {kind}")
        model.require_vision_tower("Lance Captioner")
        system_prompt = instruction.strip() or None
        sampled = sampling == "on"
        settings = TextSettings(max_new_tokens=max_new_tokens, temperature=temperature if sampled else 0.0,
                                top_p=top_p if sampled else 1.0)
        frames = check_request(TaskRequest(task=task, prompt=question, media=media_frames(image, kind, fps),
                                           instruction=system_prompt, resolution=resolution, text=settings))

        model.load(VIT)
        vision = encode_vision(model.vision_tower, frames, resolution_preset(resolution).vit, device=model.device,
                               attention=model.attention)
        model.load(UND, tokens=vision.embeds.shape[0] + max_new_tokens)
        decoder = model.decoder(with_generation=False)
        prompt = prefill_question(decoder, model.tokenizer, task, question, vision, instruction=system_prompt,
                                  max_new_tokens=max_new_tokens)
        generator = torch.Generator("cpu").manual_seed(seed) if sampled else None
        reply = decode_answer(decoder, model.tokenizer, prompt, settings, generator=generator,
                              on_token=TokenProgress(max_new_tokens))
        return io.NodeOutput(reply.text, ui=ui.PreviewText(reply.text))


NODE_CLASSES.append(LanceCaptioner)
