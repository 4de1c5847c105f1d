"""Turn one run's timings into a results record, with its floor and how close the run came to it.

Every record has the fields the README table and the issue ask for; ``None`` marks a figure that
does not apply to the task (no CFG step in x2t, no tokens/s in generation).
"""
from __future__ import annotations

from lance_model.config import LLMConfig
from lance_model.sampling import FlowSettings
from lance_model.sequence import latent_shape

import floors
from runners import Timing, cfg_flags
from tasks import TaskSpec


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _sum(*parts: float | None) -> float:
    return sum(p for p in parts if p is not None)


def generation_record(spec: TaskSpec, timing: Timing, cfg: LLMConfig, common: dict) -> dict:
    t, h, w = latent_shape(spec.frames, spec.height, spec.width)
    block = t * h * w + 2  # latent tokens and the two markers around them
    step_cfg = timing.median_step(cfg=True, skip_first=spec.extrapolated)
    step_plain = timing.median_step(cfg=False, skip_first=spec.extrapolated)
    schedule = cfg_flags(FlowSettings(steps=spec.steps))
    n_cfg, n_plain = sum(schedule), len(schedule) - sum(schedule)
    before_steps = _sum(timing.vit_s, timing.vae_encode_s, timing.prefill_s)
    if spec.extrapolated:
        end_to_end = before_steps + n_cfg * step_cfg + n_plain * step_plain + _sum(timing.vae_decode_s)
    else:
        end_to_end = before_steps + timing.sample_s + _sum(timing.vae_decode_s)

    flops_plain = floors.pass_flops(cfg, block, timing.cond_prefix)
    flops_cfg = flops_plain + floors.pass_flops(cfg, block, timing.uncond_prefix)
    flops_prefill = floors.pass_flops(cfg, timing.cond_prefix, 0)
    floor_e2e = floors.seconds(flops_prefill + n_cfg * flops_cfg + n_plain * flops_plain)
    return {
        **common, "task": spec.task, "height": spec.height, "width": spec.width, "frames": spec.frames,
        "steps": spec.steps, "latent_tokens": block - 2,
        "cond_prefix_tokens": timing.cond_prefix, "uncond_prefix_tokens": timing.uncond_prefix,
        "end_to_end_s": end_to_end, "end_to_end_measured": not spec.extrapolated,
        "timed_steps": {"cfg": sum(timing.step_is_cfg), "plain": len(timing.step_is_cfg) - sum(timing.step_is_cfg),
                        "first_discarded": spec.extrapolated},
        "step_cfg_s": step_cfg, "step_plain_s": step_plain, "steps_s": timing.step_s,
        "prefill_s": timing.prefill_s, "decode_s": timing.vae_decode_s, "vae_decode_s": timing.vae_decode_s,
        "vit_s": timing.vit_s, "vae_encode_s": timing.vae_encode_s,
        "peak_alloc_gib": timing.peak_alloc_gib, "peak_reserved_gib": timing.peak_reserved_gib,
        "weights_gib": timing.weights_gib, "tokens_per_s": None, "finite": timing.finite,
        "floor": {"step_cfg_s": floors.seconds(flops_cfg), "step_plain_s": floors.seconds(flops_plain),
                  "llm_end_to_end_s": floor_e2e, "matmul_tflops": floors.MATMUL_TFLOPS},
        "achieved_tflops_cfg": _ratio(flops_cfg / 1e12, step_cfg),
        "achieved_tflops_plain": _ratio(flops_plain / 1e12, step_plain),
        "floor_fraction_cfg": _ratio(floors.seconds(flops_cfg), step_cfg),
        "floor_fraction_plain": _ratio(floors.seconds(flops_plain), step_plain),
        "floor_fraction_end_to_end": _ratio(floor_e2e, end_to_end),
    }


def understanding_record(spec: TaskSpec, timing: Timing, cfg: LLMConfig, common: dict) -> dict:
    tokens_per_s = _ratio(timing.tokens, timing.text_decode_s)
    floor_rate = floors.decode_floor_tokens_per_s(cfg, timing.cond_prefix + timing.tokens // 2)
    return {
        **common, "task": spec.task, "height": spec.height, "width": spec.width, "frames": spec.frames,
        "steps": None, "prompt_tokens": timing.cond_prefix, "new_tokens": timing.tokens,
        "end_to_end_s": _sum(timing.vit_s, timing.prefill_s, timing.text_decode_s), "end_to_end_measured": True,
        "step_cfg_s": None, "step_plain_s": None, "prefill_s": timing.prefill_s, "decode_s": timing.text_decode_s,
        "vit_s": timing.vit_s, "peak_alloc_gib": timing.peak_alloc_gib,
        "peak_reserved_gib": timing.peak_reserved_gib, "weights_gib": timing.weights_gib,
        "tokens_per_s": tokens_per_s, "finite": timing.finite,
        "floor": {"tokens_per_s": floor_rate, "copy_tb_per_s": floors.COPY_TB_PER_S},
        "floor_fraction_tokens": _ratio(tokens_per_s, floor_rate),
    }
