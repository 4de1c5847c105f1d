"""One whole Lance task from loaded models and a request: validation, the reference's defaults, media
preprocessing, and the model steps of ``generation`` / ``understanding`` in order, then the VAE decode.

The steps themselves (``encode_vision``, ``vae.encode_condition``, ``encode_prompt``, ``sample_latent``,
``vae.decode_to_uint8``; ``prefill_question``, ``decode_answer``) are what a node graph calls one by one,
with only each step's parts loaded; this module is the fixed chain of them that the command line
(``python -m lance_model run``) runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import LATENT
from .generation import EditSource, GenerationCondition, StepPreview, encode_prompt, sample_latent
from .mot import MoTDecoder
from .noise import comfy_noise
from .preprocess import resolution_preset, rgb_frames, vae_input
from .sampling import FlowSettings, TextSettings
from .sequence import EDIT_TASKS, TEXT_TO_VISUAL_TASKS, UNDERSTANDING_TASKS, PackedSample, latent_shape
from .understanding import Answer, decode_answer, prefill_question
from .vae import decode_to_uint8, encode_condition
from .vision_tokens import encode_vision

TASKS = TEXT_TO_VISUAL_TASKS + EDIT_TASKS + UNDERSTANDING_TASKS
IMAGE_INPUT_TASKS = ("i2v", "image_edit", "x2t_image")
VIDEO_INPUT_TASKS = ("video_edit", "x2t_video")
VIT_TASKS = EDIT_TASKS + UNDERSTANDING_TASKS
VAE_TASKS = TEXT_TO_VISUAL_TASKS + EDIT_TASKS

# The resolution presets the reference's README uses per task (images 768 px, videos 480p).
DEFAULT_RESOLUTION = {"t2i": "image_768res", "image_edit": "image_768res", "x2t_image": "image_768res",
                      "t2v": "video_480p", "i2v": "video_480p", "video_edit": "video_480p", "x2t_video": "video_480p"}
DEFAULT_SEED = 42


class RequestError(ValueError):
    """A task request that cannot run as given; the message names the problem and the fix."""


@dataclass(frozen=True, eq=False)
class TaskRequest:
    task: str
    prompt: str                               # caption, edit instruction or question
    media: object = None                      # image, or the clip's frames as the frame sampler picked them
    instruction: str | None = None            # x2t system prompt (default: the reference's example)
    height: int | None = None                 # t2i / t2v output size (other tasks take it from the media)
    width: int | None = None
    frames: int | None = None                 # t2v / i2v output frames, 4k+1
    resolution: str | None = None             # bucket preset for media inputs (default per task)
    flow: FlowSettings = field(default_factory=FlowSettings)
    text: TextSettings = field(default_factory=TextSettings)
    seed: int = DEFAULT_SEED
    noise: torch.Tensor | None = None         # [N_vae, 48] in the reference's layout (edit: source rows first)
    posterior_eps: torch.Tensor | None = None  # [48, t, h, w] noise of the VAE posterior of the condition


@dataclass
class LanceModels:
    decoder: MoTDecoder        # understanding + generation experts
    tokenizer: object
    vit: object = None         # VisionTower: edits and x2t
    vae: object = None         # Wan 2.2 VAE (module or comfy.sd.VAE): all generation tasks


@dataclass
class TaskResult:
    sample: PackedSample                       # the conditional token sequence that ran (x2t: the prompt)
    final_latent: torch.Tensor | None = None   # [t, h, w, 48] the generated target
    frames: torch.Tensor | None = None         # uint8 [F, H, W, 3] its decode
    answer: Answer | None = None               # x2t


def resolution_of(request: TaskRequest):
    return resolution_preset(request.resolution or DEFAULT_RESOLUTION[request.task])


# ----------------------------------------------------------------------------------------------------
# Validation


def _is_clip_length(frames: int, minimum: int) -> bool:
    """4k+1 frames within the model's limits (the VAE packs 4 frames per latent frame after the first)."""
    return minimum <= frames <= LATENT.max_num_frames and (frames - 1) % LATENT.temporal_factor == 0


def _check_output_frames(frames, task: str, minimum: int) -> None:
    if frames is None:
        raise RequestError(f"{task} needs the number of output frames (4k+1, e.g. {minimum} or 49)")
    if not _is_clip_length(frames, minimum):
        raise RequestError(f"{task} makes 4k+1 frames from {minimum} to {LATENT.max_num_frames} (the VAE packs "
                           f"4 frames per latent frame after the first), got {frames}")


def _check_size(height, width, task: str) -> None:
    if height is None or width is None:
        raise RequestError(f"{task} needs the output height and width (multiples of "
                           f"{LATENT.spatial_factor} px, e.g. 768×768)")
    side = LATENT.spatial_factor
    biggest = LATENT.max_latent_size * side
    for name, value in (("height", height), ("width", width)):
        if value < side or value % side or value > biggest:
            raise RequestError(f"{name} must be a multiple of {side} px between {side} and {biggest} (the "
                               f"model's {LATENT.max_latent_size}-latent grid), got {value}")


def _check_settings(request: TaskRequest) -> None:
    task = request.task
    if task not in UNDERSTANDING_TASKS and not request.prompt.strip():
        what = "edit instruction" if task in EDIT_TASKS else "prompt"
        raise RequestError(f"{task} needs a non-empty {what}")
    if task in UNDERSTANDING_TASKS:
        text = request.text
        if text.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be at least 1, got {text.max_new_tokens}")
        if text.temperature < 0 or not 0 < text.top_p <= 1:
            raise RequestError(f"sampling needs temperature >= 0 (0 = greedy) and 0 < top_p <= 1, got "
                               f"temperature {text.temperature}, top_p {text.top_p}")
    if task in ("t2i", "t2v"):
        _check_size(request.height, request.width, task)
    if task == "t2i" and request.frames not in (None, 1):
        raise RequestError(f"t2i makes one image, got frames={request.frames}; use t2v for video")
    if task == "t2v":
        _check_output_frames(request.frames, task, 1)
    if task == "i2v":
        _check_output_frames(request.frames, task, 1 + LATENT.temporal_factor)


# What to do when an image task is given a clip.
_CLIP_HINT = {"i2v": "pass one frame of the clip as the image", "image_edit": "use video_edit for a clip",
              "x2t_image": "use x2t_video for a clip"}


def _check_media(request: TaskRequest) -> list:
    task = request.task
    needed = "an image" if task in IMAGE_INPUT_TASKS else "a video" if task in VIDEO_INPUT_TASKS else None
    if needed is None:
        if request.media is not None:
            raise RequestError(f"{task} takes no image or video input")
        return []
    if request.media is None:
        raise RequestError(f"{task} needs {needed} as input")
    frames = rgb_frames(request.media)
    if task in IMAGE_INPUT_TASKS and len(frames) != 1:
        raise RequestError(f"{task} takes one image, got {len(frames)} frames; {_CLIP_HINT[task]}")
    if task == "video_edit" and not _is_clip_length(len(frames), 1 + LATENT.temporal_factor):
        raise RequestError(f"video_edit needs 4k+1 source frames from {1 + LATENT.temporal_factor} to "
                           f"{LATENT.max_num_frames} (the VAE's frame grouping), got {len(frames)}; trim the clip "
                           f"(a video file is sampled to 4k+1 frames automatically) or use image_edit for one image")
    return frames


def check_request(request: TaskRequest) -> list:
    """Validate a request before any model runs; returns its media as RGB frames (empty list if none)."""
    if request.task not in TASKS:
        raise RequestError(f"unknown task {request.task!r}; choose one of {', '.join(TASKS)}")
    resolution_of(request)
    _check_settings(request)
    return _check_media(request)


# ----------------------------------------------------------------------------------------------------
# Noise


def target_noise(request: TaskRequest, source_tokens: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Initial noise ``[t, h, w, 48]`` of the target: the request's reference-layout rows (the target is the
    last ``t·h·w`` of them), or ComfyUI's CPU draw from ``seed`` for the target latent."""
    count = shape[0] * shape[1] * shape[2]
    if request.noise is None:
        return comfy_noise((1, LATENT.channels, *shape), request.seed)[0].reshape(*shape, LATENT.channels)
    expected = (source_tokens + count, LATENT.channels)
    if tuple(request.noise.shape) != expected:
        what = f"{source_tokens} source + {count} target" if source_tokens else f"{count} target"
        raise RequestError(f"noise must be [{expected[0]}, {expected[1]}] ({what} latent tokens, token-major), "
                           f"got {list(request.noise.shape)}")
    return request.noise[source_tokens:].reshape(*shape, LATENT.channels)


def _encode(vae, pixels: torch.Tensor, eps: torch.Tensor | None, seed: int) -> torch.Tensor:
    """Posterior-sampled latent ``[t, h, w, 48]`` of ``pixels`` (as the reference samples its conditions);
    without ``eps`` the posterior noise comes from a CPU generator seeded with ``seed``."""
    generator = None if eps is not None else torch.Generator("cpu").manual_seed(seed)
    try:
        return encode_condition(vae, pixels, eps=eps, generator=generator).latent
    except ValueError as e:
        if eps is None:
            raise
        raise RequestError(f"posterior eps: {e}") from None


# ----------------------------------------------------------------------------------------------------
# Tasks


def run_task(models: LanceModels, request: TaskRequest, on_step: StepPreview | None = None,
             on_token: Callable[[int], None] | None = None) -> TaskResult:
    """Run ``request``. ``on_step(step, x0)`` follows the flow sampler, ``on_token(id)`` the x2t decoder."""
    frames = check_request(request)
    _require_parts(models, request.task)
    if request.task in UNDERSTANDING_TASKS:
        vision = encode_vision(models.vit, frames, resolution_of(request).vit)
        prompt = prefill_question(models.decoder, models.tokenizer, request.task, request.prompt, vision,
                                  instruction=request.instruction, max_new_tokens=request.text.max_new_tokens)
        sampler = torch.Generator("cpu").manual_seed(request.seed)  # only drawn from when temperature > 0
        reply = decode_answer(models.decoder, models.tokenizer, prompt, request.text, sampler, on_token)
        return TaskResult(sample=prompt.sample, answer=reply)

    clean_frames = None
    if request.task in EDIT_TASKS:
        condition, shape = _encode_edit(models, request, frames)
    else:
        condition = encode_prompt(models.decoder, models.tokenizer, request.task, request.prompt)
        if request.task == "i2v":
            clean_frames = _encode_image(models, request, frames)
            latent_frames = (request.frames - 1) // LATENT.temporal_factor + 1
            shape = (latent_frames, *clean_frames.shape[1:3])
        else:
            shape = latent_shape(request.frames or 1, request.height, request.width)
    noise = target_noise(request, condition.source_tokens, shape)
    sample = condition.sample_for(shape)
    latent = sample_latent(models.decoder, condition, noise, request.flow, clean_frames=clean_frames,
                           callback=on_step, free_condition=True)
    return TaskResult(sample=sample, final_latent=latent, frames=decode_to_uint8(models.vae, latent))


def _require_parts(models: LanceModels, task: str) -> None:
    if task in VIT_TASKS and models.vit is None:
        raise RequestError(f"{task} needs the vision tower (Qwen2.5-VL-ViT); load it with the model")
    if task in VAE_TASKS and models.vae is None:
        raise RequestError(f"{task} needs the Wan 2.2 VAE (Wan2.2_VAE.pth); load it with the model")


def _encode_image(models: LanceModels, request: TaskRequest, frames) -> torch.Tensor:
    """i2v: the image at its VAE bucket → the target's clean first latent frame ``[1, h, w, 48]``."""
    pixels = vae_input(frames, resolution_of(request).vae)
    eps = request.posterior_eps
    if eps is not None and eps.dim() == 4:
        eps = eps[:, :1]  # the reference draws eps for a whole clip of which only frame 0 is used
    return _encode(models.vae, pixels, eps, request.seed)


def _encode_edit(models: LanceModels, request: TaskRequest, frames) -> tuple[GenerationCondition, tuple]:
    preset = resolution_of(request)
    vision = encode_vision(models.vit, frames, preset.vit)
    latent = _encode(models.vae, vae_input(frames, preset.vae), request.posterior_eps, request.seed)
    condition = encode_prompt(models.decoder, models.tokenizer, request.task, request.prompt,
                              EditSource(vision, latent))
    return condition, tuple(latent.shape[:3])
