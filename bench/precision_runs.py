"""The model outputs the GPU agreement check compares: the same random-weight model and inputs run in
bf16 (as users run it) and through an fp32 copy of the same weights.

The fp32 copies are built at fp32 and loaded from the bf16 modules' state dicts (rather than cast), so
no module keeps a bf16 setting of its own (the vision tower computes its RoPE table in its build dtype).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lance_model.config import LATENT
from lance_model.generation import GenerationCondition
from lance_model.kv_plan import plan_generation
from lance_model.latent import latent_pos_ids
from lance_model.mot import MoTDecoder, build_experts
from lance_model.sampling import (Branch, FlowSettings, NoiseBlock, TextSettings, block_velocity, combine_cfg,
                                  flow_timesteps)
from lance_model.understanding import decode_answer, prefill_question
from lance_model.vision_tokens import VisionTokens
from lance_model.vit import VisionTower, build_vision_tower

from tasks import QUESTION

X2T_TASK = "x2t_image"


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖, computed in fp32."""
    if actual.shape != expected.shape:
        raise ValueError(f"cannot compare shapes {list(actual.shape)} and {list(expected.shape)}")
    expected = expected.float()
    return float((actual.to(expected.device).float() - expected).norm() / expected.norm())


def float32_decoder(decoder: MoTDecoder) -> MoTDecoder:
    und, gen = build_experts(decoder.config, device="meta", dtype=torch.float32)
    return MoTDecoder(_loaded(und, decoder.und), _loaded(gen, decoder.gen), dtype=torch.float32)


def float32_vit(vit: VisionTower) -> VisionTower:
    return _loaded(build_vision_tower(vit.config, device="meta", dtype=torch.float32), vit)


def _loaded(twin: nn.Module, source: nn.Module) -> nn.Module:
    twin.to_empty(device=next(source.parameters()).device)
    twin.load_state_dict(source.state_dict())
    return twin.requires_grad_(False).eval()


def draw_noise(shape: tuple[int, int, int], device: torch.device, seed: int) -> torch.Tensor:
    """The initial latent ``[t, h, w, C]`` in bf16, as the sampler takes it."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, LATENT.channels, generator=generator, device=device).to(torch.bfloat16)


@dataclass(frozen=True)
class Step0:
    """The velocities of the first sampler step (t = 1): both CFG branches and their combination."""

    cond: torch.Tensor
    uncond: torch.Tensor
    combined: torch.Tensor


def step0_velocities(decoder: MoTDecoder, condition: GenerationCondition, noise: torch.Tensor,
                     settings: FlowSettings) -> Step0:
    shape = tuple(noise.shape[:3])
    plan = plan_generation(condition.sample_for(shape), condition.config)
    block = NoiseBlock(condition.marker_embeds, latent_pos_ids(*shape))
    x = noise.reshape(-1, LATENT.channels)
    t = torch.full((x.shape[0],), float(flow_timesteps(settings.steps, settings.shift)[0]), device=x.device)
    cond = block_velocity(decoder, block, x, t, Branch(condition.cond_cache, plan.cond_noise_positions))
    uncond = block_velocity(decoder, block, x, t, Branch(condition.uncond_cache, plan.uncond_noise_positions))
    return Step0(cond, uncond, combine_cfg(cond, uncond, settings.cfg_scale, settings.renorm, settings.renorm_min))


@dataclass(frozen=True)
class Answer:
    logits: torch.Tensor   # next-token logits at the prompt's last position
    ids: list[int]         # the greedy answer


def x2t_answer(decoder: MoTDecoder, tokenizer, vision: VisionTokens, new_tokens: int) -> Answer:
    state = prefill_question(decoder, tokenizer, X2T_TASK, QUESTION, vision, max_new_tokens=new_tokens)
    last = len(state.sample) - 1
    # On a fork: the decoding below starts from the same prefilled cache (and frees it).
    logits = decoder.decode_step(state.sample.token_ids[last:last + 1], state.positions[:, last:last + 1],
                                 state.cache.fork())[0]
    return Answer(logits, decode_answer(decoder, tokenizer, state, TextSettings(max_new_tokens=new_tokens)).ids)
