"""Lance Sampler: LANCE_COND + target LATENT -> generated LATENT (flow matching with text CFG)."""
from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

from ..lance_model.config import LATENT
from ..lance_model.generation import GenerationCondition, sample_latent
from ..lance_model.noise import comfy_noise, reference_noise
from ..lance_model.sampling import RENORM_MODES, FlowSettings
from ..lance_model.vae_latent import comfy_latent_to_lance, lance_latent_to_comfy
from . import NODE_CLASSES, comfy_runtime
from .condition_device import condition_on
from .latents import CLEAN_FRAMES_KEY
from .memory_errors import call_with_memory_advice
from .model_handle import GEN, UND
from .progress import StepProgress
from .sockets import LanceCondSocket, LanceModelSocket
from .validation import PIXELS_PER_LATENT, first_error, latent_size_error, option_error

NOISE_KINDS = ("comfy", "reference")
SAMPLING_REMEDY = ("use a smaller width/height or fewer frames, load the checkpoint with weight_dtype fp8_e4m3fn, "
                   "and decode with VAE Decode (Tiled)")
_DEFAULTS = FlowSettings()


def _target_samples(latent: dict) -> torch.Tensor:
    samples = latent["samples"]
    if samples.dim() != 5 or samples.shape[1] != LATENT.channels:
        raise ValueError(f"Lance Sampler needs a Wan 2.2 latent [1, {LATENT.channels}, t, h, w], got shape "
                         f"{list(samples.shape)}; make it with Lance Empty Latent, Lance Image To Video Latent or "
                         f"Lance Edit Encode")
    if samples.shape[0] != 1:
        raise ValueError(f"Lance Sampler generates one latent at a time, got a batch of {samples.shape[0]}; use "
                         f"batch size 1 and queue the prompt again for more")
    too_large = latent_size_error(*samples.shape[2:])
    if too_large:
        raise ValueError(f"Lance Sampler: {too_large}")
    return samples


def _kept_frames(latent: dict, frames: int) -> int:
    """How many leading latent frames the noise_mask keeps (0 = generate all; i2v keeps 1)."""
    mask = latent.get("noise_mask")
    if mask is None:
        return 0
    if mask.dim() != 5 or mask.shape[2] != frames:
        raise ValueError(f"noise_mask must mark whole latent frames ([1, 1, {frames}, h, w]), got shape "
                         f"{list(mask.shape)}")
    kept = [bool((mask[:, :, i] == 0).all()) for i in range(frames)]
    generated = [bool((mask[:, :, i] == 1).all()) for i in range(frames)]
    if not all(k or g for k, g in zip(kept, generated)):
        raise ValueError("Lance keeps or generates whole latent frames: the noise_mask must be 0 or 1 for each "
                         "entire latent frame")
    count = kept.index(False) if False in kept else frames
    if any(kept[count:]) or count > 1 or count == frames:
        raise ValueError("Lance can keep only the first latent frame of a video (image-to-video), with at least "
                         "one frame to generate; use Lance Image To Video Latent")
    return count


def _clean_frames(latent: dict, samples: torch.Tensor, count: int) -> torch.Tensor:
    """The kept frames as Lance latents [count, h, w, 48]: exact when the i2v node's copy still matches."""
    given = samples[:, :, :count]
    exact = latent.get(CLEAN_FRAMES_KEY)
    if exact is not None and torch.equal(lance_latent_to_comfy(exact).to(given.device), given):
        return exact
    return comfy_latent_to_lance(given)[0]


def _condition_for(cond: GenerationCondition, model, frames: int, kept: int) -> GenerationCondition:
    if cond.config != model.config:
        raise ValueError("the cond was encoded by a checkpoint of another architecture (llm_config.json) than the "
                         "model given to Lance Sampler; connect the same Lance Checkpoint Loader to both")
    if kept:
        if cond.task != "t2v":
            raise ValueError("an image-to-video latent needs a prompt encoded with task text_to_video (Lance Text "
                             "Encode on Lance_3B_Video)")
        # i2v's prompt and cached prefix are those of t2v; the task only changes the target's first frame.
        return dataclasses.replace(cond, task="i2v")
    if cond.task == "t2i" and frames > 1:
        raise ValueError(f"the prompt was encoded with task text_to_image but the latent has {frames} latent frames; "
                         f"use task text_to_video (and Lance_3B_Video) for video")
    return cond


def _initial_noise(kind: str, samples: torch.Tensor, seed: int, source_tokens: int, device) -> torch.Tensor:
    t, h, w = samples.shape[2:]
    if kind == "comfy":
        rows = comfy_noise(samples.shape, seed)[0]
    else:
        rows = reference_noise(source_tokens + t * h * w, t * h * w, seed, channels=LATENT.channels, device=device)
    return rows.reshape(t, h, w, LATENT.channels)


class LanceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LanceSampler",
            display_name="Lance Sampler",
            category="Lance/sampling",
            description="Generates the target latent with Lance's generation expert: Euler steps on a shifted "
                        "flow schedule with text classifier-free guidance. Decode the result with VAE Decode.",
            inputs=[
                LanceModelSocket.Input("model", tooltip="The same model that encoded the cond."),
                LanceCondSocket.Input("cond", tooltip="From Lance Text Encode or Lance Edit Encode."),
                io.Latent.Input("latent", tooltip="The target: Lance Empty Latent (t2i, t2v), Lance Image To Video "
                                                  "Latent (i2v) or the latent of Lance Edit Encode."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (the reference uses 42)."),
                io.Int.Input("steps", default=_DEFAULTS.steps, min=1, max=1000,
                             tooltip="Euler steps; the reference uses 30 (50 for its benchmarks)."),
                io.Float.Input("cfg", default=_DEFAULTS.cfg_scale, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale; 4.0 in the reference. 1.0 or less turns guidance off "
                                       "(one pass per step instead of two)."),
                io.Float.Input("shift", default=_DEFAULTS.shift, min=0.01, max=20.0, step=0.05, round=0.01,
                               tooltip="Schedule shift: larger spends more steps at high noise. 3.5 in the "
                                       "reference (3.0 for its VBench videos)."),
                io.Float.Input("cfg_start", default=_DEFAULTS.cfg_interval[0], min=0.0, max=1.0, step=0.01,
                               tooltip="Guidance runs while cfg_start < t <= cfg_end (t = 1 is pure noise); the "
                                       "reference guides 0.4 < t <= 1.0, skipping the last steps."),
                io.Float.Input("cfg_end", default=_DEFAULTS.cfg_interval[1], min=0.0, max=1.0, step=0.01,
                               tooltip="Upper end of the guided time range (1.0 = from the first step)."),
                io.Combo.Input("renorm", options=list(RENORM_MODES), default=_DEFAULTS.renorm,
                               tooltip="Caps the guided velocity's norm at the unguided one's: global (reference), "
                                       "per token (channel), or none."),
                io.Combo.Input("noise", options=list(NOISE_KINDS), default="comfy",
                               tooltip="comfy: ComfyUI's CPU noise, the same picture on every device. reference: "
                                       "the official code's draw on the compute device (matches its GPU outputs "
                                       "for the same seed)."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The generated latent [1, 48, t, h, w]; decode it with VAE Decode.")],
        )

    @classmethod
    def validate_inputs(cls, cfg_start, cfg_end, renorm, noise):
        combo = first_error(option_error("renorm", renorm, RENORM_MODES), option_error("noise", noise, NOISE_KINDS))
        if combo is not True:
            return combo
        for name, value in (("cfg_start", cfg_start), ("cfg_end", cfg_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                return f"{name} must lie between 0 and 1 (flow time), got {value}"
        if cfg_start is not None and cfg_end is not None and cfg_start > cfg_end:
            return (f"cfg_start ({cfg_start}) is above cfg_end ({cfg_end}): guidance would never run; swap them, "
                    f"or set cfg to 1.0 to turn guidance off")
        return True

    @classmethod
    def execute(cls, model, cond: GenerationCondition, latent: dict, seed: int, steps: int, cfg: float, shift: float,
                cfg_start: float, cfg_end: float, renorm: str, noise: str) -> io.NodeOutput:
        samples = _target_samples(latent)
        t, h, w = samples.shape[2:]
        kept = _kept_frames(latent, t)
        condition = _condition_for(cond, model, t, kept)
        clean = _clean_frames(latent, samples, kept) if kept else None
        settings = FlowSettings(steps=steps, shift=shift, cfg_scale=cfg, cfg_interval=(cfg_start, cfg_end),
                                renorm=renorm)
        initial = _initial_noise(noise, samples, seed, condition.source_tokens, model.device)

        model.load(GEN, UND, tokens=len(condition.cond_cache) + t * h * w)
        # A device copy of the cond: sample_latent frees its caches when it ends, even on an interrupt,
        # while the cached original stays intact for the next prompt.
        generated = call_with_memory_advice(
            f"Lance Sampler ran out of memory on a {w * PIXELS_PER_LATENT}x{h * PIXELS_PER_LATENT} px latent of {t} "
            f"latent frame(s)", SAMPLING_REMEDY,
            sample_latent, model.decoder(with_generation=True), condition_on(condition, model.device), initial,
            settings, clean_frames=clean, callback=StepProgress(steps), free_condition=True)
        out = lance_latent_to_comfy(generated).to(comfy_runtime.intermediate_device())
        return io.NodeOutput({"samples": out})


NODE_CLASSES.append(LanceSampler)
