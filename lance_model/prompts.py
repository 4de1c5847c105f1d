"""System prompts and the chat template of Lance (spec §4.1).

The system prompts are model inputs: they must be byte-exact, including the typographic apostrophe
(U+2019) in "user’s". The template is the reference's Qwen-style chat layout with every visual item
written as one ``<|vision_start|><|video_pad|><|vision_end|>`` placeholder (images too); the
sequence builder later expands each placeholder's pad to one token per LLM token of the block.
"""
from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
VISUAL_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END

MEDIA_KINDS = ("image", "video")

_TEXT_TO_IMAGE = ("Describe the {media} by detailing the color, quantity, text, shape, size, texture, spatial "
                  "relationships of the objects and background:")
_TEXT_TO_VIDEO = ("Describe the {media} by detailing the color, quantity, visible text, shape, size, texture, "
                  "spatial relationships and motion/camera movements of the objects and background:")
_EDIT = ("Describe the key features of the input {media} (color, shape, size, texture, objects, background), "
         "then explain how the user\u2019s text instruction should alter or modify the {media}. Generate a new "
         "{media} that meets the user\u2019s requirements while maintaining consistency with the original input "
         "where appropriate.")

# The reference names the medium after the task's target (t2i: image; t2v, i2v: video) or, for edits,
# after the medium of the source.
GENERATION_SYSTEM_PROMPTS = {
    "t2i": _TEXT_TO_IMAGE.format(media="image"),
    "t2v": _TEXT_TO_VIDEO.format(media="video"),
    "i2v": _TEXT_TO_VIDEO.format(media="video"),
    "image_edit": _EDIT.format(media="image"),
    "video_edit": _EDIT.format(media="video"),
}

# x2t takes its system prompt from the request; these are the reference's example instructions.
DEFAULT_UNDERSTANDING_INSTRUCTIONS = {
    "image": "Look at the image carefully and answer the question.",
    "video": "Watch the video carefully and answer the question.",
}


def generation_system_prompt(task: str) -> str:
    try:
        return GENERATION_SYSTEM_PROMPTS[task]
    except KeyError:
        raise ValueError(f"no system prompt for task {task!r}; generation tasks are "
                         f"{', '.join(GENERATION_SYSTEM_PROMPTS)}") from None


def default_understanding_instruction(media: str) -> str:
    try:
        return DEFAULT_UNDERSTANDING_INSTRUCTIONS[media]
    except KeyError:
        raise ValueError(f"media must be one of {MEDIA_KINDS}, got {media!r}") from None


def render_chat(system: str, user: str, assistant: str | None) -> str:
    """One system, one user and one assistant turn in Lance's chat layout.

    With ``assistant`` given the turn is closed and the trailing line break dropped (the reference
    strips the rendered string, which only ever removes that line break). With ``assistant=None``
    the text ends with the open ``<|im_start|>assistant\\n`` header, i.e. the prompt that
    understanding generates from.
    """
    text = (f"{IM_START}system\n{system}{IM_END}\n"
            f"{IM_START}user\n{user}{IM_END}\n"
            f"{IM_START}assistant\n")
    if assistant is None:
        return text
    return f"{text}{assistant}{IM_END}"
