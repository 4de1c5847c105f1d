"""Progress of the long-running nodes: ComfyUI's ProgressBar (which the frontend shows and whose hook
also raises a pending interrupt) plus an explicit interrupt check, so Cancel stops within one step."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from . import comfy_runtime


class StepProgress:
    """``callback(step, x0)`` of ``lance_model.generation.sample_latent``: one bar tick per step, with a
    latent preview of the current clean estimate ``x0`` [t, h, w, 48] when previews are on."""

    def __init__(self, steps: int):
        self.steps = steps
        self.bar = comfy_runtime.progress_bar(steps)
        self.previewer = comfy_runtime.wan22_previewer()

    def __call__(self, step: int, x0: torch.Tensor) -> None:
        comfy_runtime.throw_if_interrupted()
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0.movedim(-1, 0).unsqueeze(0))
        self.bar.update_absolute(step + 1, self.steps, preview)


class TokenProgress:
    """``on_token(id)`` of ``lance_model.understanding.answer``: one tick per generated token."""

    def __init__(self, max_tokens: int):
        self.bar = comfy_runtime.progress_bar(max_tokens)

    def __call__(self, token_id: int) -> None:
        comfy_runtime.throw_if_interrupted()
        self.bar.update(1)


class StageProgress:
    """A node made of a few long stages (vision tower, VAE encode, prefill): one bar tick per finished
    stage, and an interrupt check before each, so Cancel takes effect at the next stage boundary."""

    def __init__(self, stages: int):
        self.stages = stages
        self.finished = 0
        self.bar = comfy_runtime.progress_bar(stages)

    @contextmanager
    def stage(self):
        comfy_runtime.throw_if_interrupted()
        yield
        self.finished += 1
        self.bar.update_absolute(self.finished, self.stages)
