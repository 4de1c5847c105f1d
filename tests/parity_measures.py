"""Model-core parity measurements against the golden fixtures, shared by the tests that assert them
(``test_vit``, ``test_mot``, ``test_sampling``, ``test_x2t``) and ``python -m tests.parity_report``, which
prints them: the ViT output from a task's media file, sampler velocities given the stored inputs (step 0
and every step teacher-forced with the stored ``x_t``), and x2t logits and teacher-forced greedy choices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from lance_model.checkpoint import VIT_FOLDER_NAME, LanceCheckpoint
from lance_model.media import read_sampled_video
from lance_model.parts import build_parts
from lance_model.preprocess import resolution_preset, vit_input
from lance_model.sampling import (TextSettings, block_velocity, cfg_active, combine_cfg, flow_timesteps,
                                  pick_token)
from lance_model.vit import VisionTower
from mot_cases import GenCase, X2TCase, rel_l2

# Golden README §5: single forward passes (ViT output, step-0 velocities, x2t logits) within 1 %; the
# reference's own bf16-vs-fp32 spread is ≤ 0.9 % for v_cond at any step and 2.6 % for the CFG-combined one.
SINGLE_FORWARD_REL_L2 = 0.01
STEP_REL_L2 = 0.015
COMBINED_REL_L2 = 0.04
# Free-running 8-step latents: the reference's own bf16-vs-fp32 spread is ≤ 1.4 %; tasks whose condition
# goes through the VAE encoder (and, for edits, the ViT) get more room.
FINAL_LATENT_REL_L2 = {"t2i": 0.02, "t2v": 0.02, "i2v": 0.03, "image_edit": 0.03, "video_edit": 0.03}
# A flip of the greedy choice is accepted only where the reference's token is within two bf16 steps of
# our best logit (a near-tie that bf16 rounding can decide either way), and only rarely.
TIE_ULPS = 2
TEXT_STEPS_PER_ALLOWED_FLIP = 50


# ---------------------------------------------------------------- ViT

def golden_media(golden_dir: Path, task: str) -> Path | None:
    """The task's input image or video file (``None`` for text-only requests)."""
    inputs = Path(golden_dir) / task / "inputs"
    entry = next(iter(json.loads((inputs / "request.json").read_text(encoding="utf-8")).values()))
    if not isinstance(entry, dict):
        return None
    media = [m for m, kind in zip(entry["interleave_array"], entry["element_dtype_array"]) if kind != "text"]
    return inputs / media[0] if media else None


@lru_cache(maxsize=None)
def vision_tower(ckpt_dir: Path, dtype: torch.dtype, device: torch.device | str = "cpu") -> VisionTower:
    """The vision tower as the model loader builds it: the checkpoint's bundled one, otherwise the
    separate one beside the checkpoint folder."""
    return build_parts(LanceCheckpoint.open(ckpt_dir), vit_dir=ckpt_dir.parent / VIT_FOLDER_NAME, device=device,
                       dtype=dtype).vit


def vit_task_error(golden_dir: Path, task: str, dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Rel-L2 of media file -> frame sampling -> preprocessing -> tower against the task's ``vit.output_0``."""
    folder = Path(golden_dir) / task
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    path = golden_media(golden_dir, task)
    media = read_sampled_video(path).frames if path.suffix == ".mp4" else Image.open(path)
    vit = vision_tower(Path(golden_dir) / settings["checkpoint"], dtype, device)
    inputs = vit_input(media, resolution_preset(settings["reference_cli_args"]["resolution"]).vit, vit.config)
    with torch.no_grad():
        out = vit(inputs.patches.to(device), [inputs.grid_thw])
    return rel_l2(out, load_file(str(folder / "tensors.safetensors"))["vit.output_0"])


# ---------------------------------------------------------------- generation velocities

@dataclass(frozen=True)
class StepVelocities:
    cond: torch.Tensor
    uncond: torch.Tensor | None  # None where the CFG window is closed
    combined: torch.Tensor  # what the Euler step uses (= cond without CFG)


def step_velocities(case: GenCase, step: int, x_updated: torch.Tensor) -> StepVelocities:
    """The velocities of sampler step ``step`` with the block's updated rows set to ``x_updated``."""
    t_step = flow_timesteps(case.settings.steps, case.settings.shift)[step]
    x = case.x_initial.clone()
    x[case.updated_rows] = x_updated
    t = torch.zeros(x.shape[0])
    t[case.updated_rows] = t_step
    cond = block_velocity(case.decoder, case.block, x, t, case.cond)
    if not cfg_active(t_step, case.settings.cfg_interval):
        return StepVelocities(cond, None, cond)
    uncond = block_velocity(case.decoder, case.block, x, t, case.uncond)
    return StepVelocities(cond, uncond, combine_cfg(cond, uncond, case.settings.cfg_scale, case.settings.renorm))


def step0_velocities(case: GenCase) -> StepVelocities:
    return step_velocities(case, 0, case.x_initial[case.updated_rows])


@dataclass(frozen=True)
class StepErrors:
    step: int
    cond: float
    uncond: float | None  # None where neither side guides; inf where only one side does
    combined: float


def step_errors(case: GenCase, step: int, velocities: StepVelocities) -> StepErrors:
    """Rel-L2 of ``velocities`` against the reference's ``gen.v_*_KK`` of ``step``."""
    ref = case.tensors
    uncond_ref = ref.get(f"gen.v_uncond_{step:02d}")
    if velocities.uncond is None and uncond_ref is None:
        uncond = None
    elif velocities.uncond is None or uncond_ref is None:
        uncond = float("inf")
    else:
        uncond = rel_l2(velocities.uncond, uncond_ref)
    return StepErrors(step, rel_l2(velocities.cond, ref[f"gen.v_cond_{step:02d}"]), uncond,
                      rel_l2(velocities.combined, ref[f"gen.v_combined_{step:02d}"]))


def teacher_forced_errors(case: GenCase) -> list[StepErrors]:
    """Every step evaluated on the reference's own ``x_t`` entering it, so errors do not accumulate."""
    return [step_errors(case, step, step_velocities(
                case, step, case.tensors[f"gen.x_t_before_step_{step:02d}__updated_rows"]))
            for step in range(case.settings.steps)]


# ---------------------------------------------------------------- x2t decoding

def logit_gap_ulps(logits: torch.Tensor, vocab_limit: int, token: int) -> float:
    """By how many bf16 steps (at the best logit's magnitude) the best selectable logit beats ``token``'s."""
    selectable = logits[:vocab_limit].float()
    best = selectable.max()
    ulp = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(best.abs()))
    return float((best - selectable[token]) / ulp)


@dataclass(frozen=True)
class TextMiss:
    step: int
    gap_ulps: float  # how far our choice's logit is above the reference token's


@dataclass(frozen=True)
class TeacherForcedText:
    steps: int
    stored_logits_rel_l2: tuple[float, ...]  # the steps whose logits the fixture stores (the first four)
    misses: tuple[TextMiss, ...]  # steps whose greedy choice differs from the reference's token
    logit_layouts: frozenset  # (shape, dtype) of every step's logits

    @property
    def equal_steps(self) -> int:
        return self.steps - len(self.misses)

    @property
    def allowed_misses(self) -> int:
        return self.steps // TEXT_STEPS_PER_ALLOWED_FLIP

    @property
    def argmax_ok(self) -> bool:
        return len(self.misses) <= self.allowed_misses and all(m.gap_ulps <= TIE_ULPS for m in self.misses)


def teacher_forced_text(case: X2TCase) -> TeacherForcedText:
    """Decode the reference's answer token by token (feeding its tokens, not ours) from the prefilled
    prompt of ``case`` (whose cache this consumes) and compare logits and greedy choices."""
    ref = case.tensors
    expected_ids = ref["x2t.generated_ids"].tolist()
    positions = ref["pos.prompt_plus_256_pads"][:, case.context_len:]
    token = int(ref["seq.packed_text_ids"][case.context_len])
    stored, misses, layouts = [], [], set()
    for step, expected in enumerate(expected_ids):
        logits = case.decoder.decode_step(torch.tensor([token]), positions[:, step:step + 1], case.cache)[0]
        layouts.add((tuple(logits.shape), logits.dtype))
        if f"x2t.logits_{step:02d}" in ref:
            stored.append(rel_l2(logits, ref[f"x2t.logits_{step:02d}"][0]))
        if pick_token(logits, case.vocab_limit, TextSettings()) != expected:
            misses.append(TextMiss(step, logit_gap_ulps(logits, case.vocab_limit, expected)))
        token = expected
    return TeacherForcedText(len(expected_ids), tuple(stored), tuple(misses), frozenset(layouts))
