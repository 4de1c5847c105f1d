"""Lance Text Encode: prompt -> LANCE_COND for text-to-image, text-to-video and image-to-video."""
from __future__ import annotations

from comfy_api.latest import io

from ..lance_model.generation import encode_prompt
from ..lance_model.prompts import generation_system_prompt
from . import NODE_CLASSES, comfy_runtime
from .condition_device import condition_on
from .model_handle import UND
from .progress import StageProgress
from .sockets import LanceCondSocket, LanceModelSocket
from .validation import first_error, option_error, prompt_length_error, text_error

# Widget value -> Lance task and the checkpoint variant it runs on. Image-to-video shares the
# text-to-video prompt (same system prompt, same cached prefix); its latent marks the given frame.
TASKS = {"text_to_image": ("t2i", "image"), "text_to_video": ("t2v", "video")}


class LanceTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceTextEncode",
            display_name="Lance Text Encode",
            category="Lance/conditioning",
            description="Runs the prompt through Lance's understanding expert once and keeps the result (the "
                        "prefix key/value caches of the guided and unguided branch). Changing only the seed or "
                        "the sampler settings reuses it.",
            inputs=[
                LanceModelSocket.Input("model", tooltip="From Lance Checkpoint Loader."),
                io.String.Input("prompt", multiline=True,
                                tooltip="What to generate. Lance was trained on detailed descriptions: colours, "
                                        "counts, text, layout; for video also motion and camera (e.g. 'fixed "
                                        "shot.')."),
                io.Combo.Input("task", options=list(TASKS), default="text_to_image",
                               tooltip="text_to_image (Lance_3B) or text_to_video (Lance_3B_Video). Image-to-video "
                                       "uses text_to_video with Lance Image To Video Latent."),
            ],
            outputs=[LanceCondSocket.Output(display_name="cond",
                                            tooltip="The encoded prompt, for Lance Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, prompt, task):
        return first_error(text_error("prompt", prompt), option_error("task", task, TASKS))

    @classmethod
    def execute(cls, model, prompt: str, task: str) -> io.NodeOutput:
        lance_task, variant = TASKS[task]
        model.require_variant(variant, f"task {task}")
        system_prompt = generation_system_prompt(lance_task)
        too_long = prompt_length_error(model.tokenizer, "prompt", prompt, system_prompt)
        if too_long:
            raise ValueError(too_long)
        progress = StageProgress(1)
        condition = None
        try:
            with progress.stage():
                model.load(UND, tokens=len(model.tokenizer.encode(system_prompt + prompt)))
                condition = encode_prompt(model.decoder(with_generation=False), model.tokenizer, lance_task, prompt)
            return io.NodeOutput(condition_on(condition, comfy_runtime.intermediate_device()))
        finally:
            # Release the compute-device caches however the node ends: the output is a copy with its own
            # cache lists (condition_on), and after an interrupt the traceback would keep them alive.
            if condition is not None:
                condition.free()


NODE_CLASSES.append(LanceTextEncode)
