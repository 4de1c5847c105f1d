"""One timed run of a task through the library's user-facing steps (the same calls the nodes make):
``encode_vision`` → ``encode_condition`` → ``encode_prompt`` → ``sample_latent`` → ``decode_to_uint8``
for generation, ``encode_vision`` → ``prefill_question`` → ``decode_answer`` for x2t. ``pipeline.run_task``
chains the same steps (plus request checks and a CPU noise draw), so its time is the sum measured here.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import torch

from lance_model.config import LATENT
from lance_model.generation import EditSource, encode_prompt, sample_latent
from lance_model.preprocess import vae_input
from lance_model.sampling import FlowSettings, TextSettings, cfg_active, flow_timesteps
from lance_model.sequence import latent_shape
from lance_model.understanding import decode_answer, prefill_question
from lance_model.vae import decode_to_uint8, encode_condition
from lance_model.vision_tokens import encode_vision

from clock import Clock, PeakMemory, StepMarks
from models import Models
from tasks import EDIT_INSTRUCTION, PROMPT, QUESTION, TaskSpec


@dataclass
class Timing:
    """Seconds of each stage of one run (None where a stage does not apply)."""

    vit_s: float | None = None
    vae_encode_s: float | None = None
    prefill_s: float | None = None
    sample_s: float | None = None
    vae_decode_s: float | None = None
    step_s: list[float] = field(default_factory=list)
    step_is_cfg: list[bool] = field(default_factory=list)
    text_decode_s: float | None = None
    tokens: int = 0
    cond_prefix: int = 0
    uncond_prefix: int = 0
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None
    weights_gib: float | None = None
    finite: bool = True
    output: torch.Tensor | None = None  # final latent (CPU fp32) or generated ids, to compare variants

    def median_step(self, cfg: bool, skip_first: bool) -> float | None:
        steps = [s for i, (s, c) in enumerate(zip(self.step_s, self.step_is_cfg))
                 if c == cfg and not (skip_first and i == 0)]
        return statistics.median(steps) if steps else None


def random_image(side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def flow_settings(spec: TaskSpec, warmup: bool) -> FlowSettings:
    """The real schedule, or for a short timed run ``cfg`` guided steps followed by plain ones (the
    per-step cost does not depend on t; the guidance window is moved to cover the first steps)."""
    if warmup:
        return _short_schedule(1, 1)
    if spec.extrapolated:
        return _short_schedule(spec.timed_cfg_steps, spec.timed_plain_steps)
    return FlowSettings(steps=spec.steps)


def _short_schedule(cfg_steps: int, plain_steps: int) -> FlowSettings:
    steps = cfg_steps + plain_steps
    t = flow_timesteps(steps, FlowSettings.shift)
    return FlowSettings(steps=steps, cfg_interval=(float(t[cfg_steps]), 1.0))


def cfg_flags(settings: FlowSettings) -> list[bool]:
    t = flow_timesteps(settings.steps, settings.shift)
    return [cfg_active(t[i], settings.cfg_interval) for i in range(settings.steps)]


def _edit_source(models: Models, spec: TaskSpec, clock: Clock, seed: int) -> tuple[EditSource, float, float]:
    """The edit's source from a random image, with the ViT and VAE-encode seconds."""
    image = random_image(spec.height, seed)
    start = clock.now()
    vision = encode_vision(models.vit, image, spec.vit_side)
    after_vit = clock.now()
    encoded = encode_condition(models.vae, vae_input(image, spec.vae_side).to(models.device))
    return EditSource(vision, encoded.latent), after_vit - start, clock.now() - after_vit


def _target_shape(spec: TaskSpec, source: EditSource | None) -> tuple[int, int, int]:
    if source is not None:
        return tuple(source.latent.shape[:3])
    return latent_shape(spec.frames, spec.height, spec.width)


def _prompt(spec: TaskSpec) -> str:
    return EDIT_INSTRUCTION if spec.task == "image_edit" else PROMPT


def _noise(shape, device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, LATENT.channels, generator=generator, device=device, dtype=torch.bfloat16)


def run_generation(models: Models, spec: TaskSpec, settings: FlowSettings, seed: int = 0) -> Timing:
    clock, memory = Clock(models.device), PeakMemory(models.device)
    memory.reset()
    timing = Timing(weights_gib=memory.allocated_gib(), step_is_cfg=cfg_flags(settings))
    source = None
    if spec.task == "image_edit":
        source, timing.vit_s, timing.vae_encode_s = _edit_source(models, spec, clock, seed)
    prefill_start = clock.now()
    condition = encode_prompt(models.decoder, models.tokenizer, spec.task, _prompt(spec), source)
    sample_start = clock.now()
    timing.prefill_s = sample_start - prefill_start
    timing.cond_prefix, timing.uncond_prefix = len(condition.cond_cache), len(condition.uncond_cache)

    noise = _noise(_target_shape(spec, source), models.device, seed)
    marks = StepMarks(models.device)
    marks.mark()
    latent = sample_latent(models.decoder, condition, noise, settings, callback=marks.mark, free_condition=True)
    decode_start = clock.now()
    timing.sample_s = decode_start - sample_start
    timing.step_s = marks.durations()
    timing.finite = bool(torch.isfinite(latent).all())
    timing.output = latent.float().cpu()
    if models.vae is not None:
        decode_to_uint8(models.vae, latent)
        timing.vae_decode_s = clock.now() - decode_start
    timing.peak_alloc_gib, timing.peak_reserved_gib = memory.peaks_gib()
    return timing


def run_understanding(models: Models, spec: TaskSpec, new_tokens: int, seed: int = 0) -> Timing:
    clock, memory = Clock(models.device), PeakMemory(models.device)
    memory.reset()
    timing = Timing(weights_gib=memory.allocated_gib())
    start = clock.now()
    vision = encode_vision(models.vit, random_image(spec.height, seed), spec.vit_side)
    prefill_start = clock.now()
    prompt = prefill_question(models.decoder, models.tokenizer, spec.task, QUESTION, vision,
                              max_new_tokens=new_tokens)
    decode_start = clock.now()
    reply = decode_answer(models.decoder, models.tokenizer, prompt, TextSettings(max_new_tokens=new_tokens))
    end = clock.now()
    timing.vit_s, timing.prefill_s, timing.text_decode_s = prefill_start - start, decode_start - prefill_start, \
        end - decode_start
    timing.cond_prefix, timing.tokens = len(prompt.sample), len(reply.ids)
    timing.output = torch.tensor(reply.ids)
    timing.peak_alloc_gib, timing.peak_reserved_gib = memory.peaks_gib()
    return timing


def short_sampling_call(models: Models, spec: TaskSpec, seed: int = 0):
    """A callable that repeats only the model's inner loop of ``spec`` (one CFG and one plain step, or
    16 greedy tokens), its inputs prepared beforehand: what a kernel profile should look at."""
    if spec.task.startswith("x2t"):
        vision = encode_vision(models.vit, random_image(spec.height, seed), spec.vit_side)
        settings = TextSettings(max_new_tokens=16)
        return lambda: decode_answer(models.decoder, models.tokenizer, prefill_question(
            models.decoder, models.tokenizer, spec.task, QUESTION, vision, max_new_tokens=16), settings)
    source = _edit_source(models, spec, Clock(models.device), seed)[0] if spec.task == "image_edit" else None
    condition = encode_prompt(models.decoder, models.tokenizer, spec.task, _prompt(spec), source)
    noise = _noise(_target_shape(spec, source), models.device, seed)
    return lambda: sample_latent(models.decoder, condition, noise, _short_schedule(1, 1))
