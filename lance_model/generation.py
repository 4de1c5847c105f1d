"""The two model steps of the generation tasks (t2i, t2v, i2v, image_edit, video_edit), separable so that
a node graph can run them with only the parts each needs in memory (decoding is ``vae.decode_to_uint8``):

1. ``encode_prompt`` — the prompt (and for an edit the source's ViT tokens and clean latent) → a
   ``GenerationCondition`` holding the conditional and unconditional prefix KV caches (spec §5.3 steps
   1–3). Runs the understanding expert, plus the generation expert for an edit's source latent.
2. ``sample_latent`` — condition + initial noise of the target → the generated latent ``[t, h, w, 48]``
   (spec §5.3 steps 4–6). Runs the generation expert for the latent tokens and the understanding
   expert for the two markers around them.

A text-to-visual condition does not depend on the target size (the cached prefix comes before the
target block), so one condition serves any latent size; an edit's target is the source's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import LATENT, LLMConfig
from .kv_cache import KVCache
from .kv_plan import GenerationPlan, plan_generation
from .latent import latent_pos_ids
from .mot import MoTDecoder
from .sampling import Branch, FlowSettings, NoiseBlock, flow_timesteps, sample_flow
from .sequence import EDIT_TASKS, TEXT_TO_VISUAL_TASKS, PackedSample, build_edit, build_text_to_visual
from .vision_tokens import VisionTokens

GENERATION_TASKS = TEXT_TO_VISUAL_TASKS + EDIT_TASKS

# The smallest target each text-to-visual task accepts; only the prefix before it is used when encoding.
_ANY_TARGET = {"t2i": (1, 1, 1), "t2v": (1, 1, 1), "i2v": (2, 1, 1)}

# (step index, estimate of the clean latent [t, h, w, 48]): progress bars, previews, interrupts.
StepPreview = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True, eq=False)
class EditSource:
    """What an edit knows about its source image / clip."""

    vision: VisionTokens
    latent: torch.Tensor   # [t, h, w, 48] clean (posterior-sampled) latent of the source


@dataclass(eq=False)
class GenerationCondition:
    """An encoded prompt: the prefix KV caches of both CFG branches and what is needed to place a target."""

    task: str
    prompt: str
    tokenizer: object
    config: LLMConfig
    cond_cache: KVCache
    uncond_cache: KVCache
    marker_embeds: torch.Tensor                    # [2, hidden]: the target block's start and end markers
    source_shape: tuple[int, int, int] | None      # edit: latent shape of the source (= the target's)
    vit_grid: tuple[int, int, int] | None          # edit: ViT patch grid of the source

    def sample_for(self, target_shape) -> PackedSample:
        """The packed conditional sample with a target of latent shape ``(t, h, w)``."""
        target_shape = tuple(int(v) for v in target_shape)
        check_target_shape(self.task, target_shape)
        if self.task in EDIT_TASKS:
            if target_shape != self.source_shape:
                raise ValueError(f"an edit's target has the source's latent shape {list(self.source_shape)}, "
                                 f"got {list(target_shape)}; make the target latent from the same source")
            return build_edit(self.task, self.tokenizer, self.config, self.prompt, self.vit_grid, self.source_shape)
        return build_text_to_visual(self.task, self.tokenizer, self.config, self.prompt, target_shape)

    @property
    def source_tokens(self) -> int:
        """Latent tokens of the sample before the target (an edit's source), which the reference's noise
        draw covers first."""
        return 0 if self.source_shape is None else self.source_shape[0] * self.source_shape[1] * self.source_shape[2]

    def nbytes(self) -> int:
        return self.cond_cache.nbytes() + self.uncond_cache.nbytes()

    def free(self) -> None:
        self.cond_cache.free()
        self.uncond_cache.free()


def check_target_shape(task: str, shape: tuple[int, int, int]) -> None:
    """Latent limits of the model (spec §4.4): position table of 64×64 latents and 31 latent frames."""
    t, h, w = shape
    if min(t, h, w) < 1:
        raise ValueError(f"target latent shape {list(shape)} (t, h, w) must be positive")
    if task == "t2i" and t != 1:
        raise ValueError(f"t2i makes one image (1 latent frame), got {t} latent frames; use t2v for video")
    if max(h, w) > LATENT.max_latent_size:
        raise ValueError(f"target latent {h}×{w} exceeds the model's {LATENT.max_latent_size}×"
                         f"{LATENT.max_latent_size} latent grid; use at most "
                         f"{LATENT.max_latent_size * LATENT.spatial_factor} px per side")
    if t > LATENT.max_latent_frames:
        raise ValueError(f"target has {t} latent frames, more than the model's {LATENT.max_latent_frames} "
                         f"({LATENT.max_num_frames} video frames); use fewer frames")


@torch.no_grad()
def encode_prompt(decoder: MoTDecoder, tokenizer, task: str, prompt: str,
                  source: EditSource | None = None) -> GenerationCondition:
    """Prefill both CFG branches of a generation prompt (``source`` required for the edit tasks only)."""
    cfg = decoder.config
    if task in EDIT_TASKS:
        if source is None:
            raise ValueError(f"{task} needs its source: pass source=EditSource(vision tokens, clean latent)")
        source_shape = tuple(int(v) for v in source.latent.shape[:3])
        sample = build_edit(task, tokenizer, cfg, prompt, source.vision.grid, source_shape)
    elif task in TEXT_TO_VISUAL_TASKS:
        if source is not None:
            raise ValueError(f"{task} takes no source (i2v's image is the target's clean first frame)")
        source_shape = None
        sample = build_text_to_visual(task, tokenizer, cfg, prompt, _ANY_TARGET[task])
    else:
        raise ValueError(f"task must be one of {GENERATION_TASKS}, got {task!r}")
    plan = plan_generation(sample, cfg)
    embeds, is_latent = _prefix_embeddings(decoder, sample, plan.noise.start, source)
    cond_cache, uncond_cache = _prefill(decoder, embeds, is_latent, plan)
    noise = plan.noise
    markers = decoder.embed_tokens(sample.token_ids[[noise.start, noise.end - 1]])
    return GenerationCondition(task=task, prompt=prompt, tokenizer=tokenizer, config=cfg, cond_cache=cond_cache,
                               uncond_cache=uncond_cache, marker_embeds=markers, source_shape=source_shape,
                               vit_grid=source.vision.grid if source is not None else None)


def _prefix_embeddings(decoder: MoTDecoder, sample: PackedSample, length: int, source: EditSource | None):
    """Input rows of the first ``length`` tokens and which of them are latent tokens."""
    embeds = decoder.embed_tokens(sample.token_ids[:length])
    is_latent = torch.zeros(length, dtype=torch.bool)
    if source is None:
        return embeds, is_latent
    vit_slots = sample.vit_token_indexes
    if source.vision.embeds.shape[0] != vit_slots.numel():
        raise ValueError(f"the source's ViT tokens ({source.vision.embeds.shape[0]}) do not match its grid "
                         f"{list(source.vision.grid)} ({vit_slots.numel()} tokens); encode them together")
    embeds[vit_slots] = source.vision.embeds.to(embeds.device, embeds.dtype)
    latent_slots = sample.vae_token_indexes
    latent_slots = latent_slots[latent_slots < length]  # the source block; the target comes later
    rows = source.latent.reshape(-1, source.latent.shape[-1])
    # A condition latent enters at flow time 0, its table rows numbered from its own first voxel.
    times = torch.zeros(rows.shape[0])
    embeds[latent_slots] = decoder.embed_latents(rows, times, latent_pos_ids(*source.latent.shape[:3]))
    is_latent[latent_slots] = True
    return embeds, is_latent


def _prefill(decoder: MoTDecoder, embeds: torch.Tensor, is_latent: torch.Tensor, plan: GenerationPlan):
    """Conditional and unconditional caches; both branches hold their tokens at the conditional positions
    (spec §5.5), so the splits before the caption are computed once and shared."""
    def run(cache: KVCache, splits) -> None:
        for split in splits:
            span = slice(split.start, split.end)
            decoder.prefill(embeds[span], plan.cond_positions[:, span], cache, causal=split.causal,
                            gen_rows=is_latent[span].nonzero().flatten())

    shared = plan.shared_prefix
    cond = decoder.new_cache()
    run(cond, shared)
    uncond = cond.fork()
    run(cond, plan.cond_prefix[len(shared):])
    run(uncond, plan.uncond_prefix[len(shared):])
    return cond, uncond


@torch.no_grad()
def sample_latent(decoder: MoTDecoder, condition: GenerationCondition, noise: torch.Tensor,
                  settings: FlowSettings, *, clean_frames: torch.Tensor | None = None,
                  callback: StepPreview | None = None, free_condition: bool = False) -> torch.Tensor:
    """Generate the target latent ``[t, h, w, 48]`` (bf16) from ``noise`` of that shape.

    ``clean_frames`` (i2v only, required there): the leading latent frames that are given, e.g. the
    encoded image ``[1, h, w, 48]``; they replace the noise, enter at flow time 0 and are never updated.
    ``callback(step, x0)`` runs after every step with the current estimate of the clean latent
    ``[t, h, w, 48]`` (fp32); an exception raised there (an interrupt) stops sampling. With
    ``free_condition`` the condition's caches are released when sampling ends, however it ends.
    """
    try:
        if noise.dim() != 4 or noise.shape[-1] != LATENT.channels:
            raise ValueError(f"noise must be one latent [t, h, w, {LATENT.channels}], got {list(noise.shape)}")
        shape = tuple(noise.shape[:3])
        sample = condition.sample_for(shape)
        plan = plan_generation(sample, condition.config)
        x = noise.reshape(-1, LATENT.channels).to(decoder.gen_device, torch.bfloat16)
        x = _insert_clean_frames(x, sample, clean_frames, condition.task)
        updated_rows = sample.noisy_target_indexes - (plan.noise.start + 1)
        block = NoiseBlock(marker_embeds=condition.marker_embeds, pids=latent_pos_ids(*shape))
        cond = Branch(condition.cond_cache.to(decoder.und_device), plan.cond_noise_positions)
        uncond = Branch(condition.uncond_cache.to(decoder.und_device), plan.uncond_noise_positions)
        step_hook = None if callback is None else _x0_reporter(callback, settings, updated_rows, shape)
        x = sample_flow(decoder, block, x, updated_rows, cond, uncond, settings, callback=step_hook)
        return x.reshape(*shape, LATENT.channels)
    finally:
        if free_condition:
            condition.free()


def _insert_clean_frames(x: torch.Tensor, sample: PackedSample, clean_frames, task: str) -> torch.Tensor:
    given = sample.target.clean_frames
    if given == 0:
        if clean_frames is not None:
            raise ValueError(f"{task} has no clean frames; clean_frames is for i2v's first frame")
        return x
    _, h, w = sample.target.grid
    expected = (given, h, w, LATENT.channels)
    if clean_frames is None or tuple(clean_frames.shape) != expected:
        got = "nothing" if clean_frames is None else list(clean_frames.shape)
        raise ValueError(f"{task} needs its encoded image as clean_frames {list(expected)} (the target's first "
                         f"latent frame), got {got}")
    x = x.clone()
    x[:given * h * w] = clean_frames.reshape(-1, LATENT.channels).to(x.device, x.dtype)
    return x


def _x0_reporter(callback: StepPreview, settings: FlowSettings, updated_rows: torch.Tensor, shape):
    """Turns the sampler's (step, x after the step, v) into the clean-latent estimate ``x − t·v`` at the
    step's time t, which equals ``x_after − t_next·v``; given rows are clean already."""
    timesteps = flow_timesteps(settings.steps, settings.shift)
    rows_on = {}  # the rows moved to x's device once, not at every step

    def report(step: int, x: torch.Tensor, v: torch.Tensor) -> None:
        rows = rows_on.setdefault(x.device, updated_rows.to(x.device))
        x0 = x.to(torch.float32, copy=True)
        x0[rows] -= timesteps[step + 1] * v[rows].to(x0.device).float()
        callback(step, x0.reshape(*shape, LATENT.channels))

    return report
