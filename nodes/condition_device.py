"""Moving a LANCE_COND (``GenerationCondition``) between devices without touching the original, which
ComfyUI may keep cached for the next prompt."""
from __future__ import annotations

import dataclasses

import torch

from ..lance_model.generation import GenerationCondition


def condition_on(condition: GenerationCondition, device: torch.device) -> GenerationCondition:
    """A copy whose KV caches and marker embeddings live on ``device`` (shared tensors where they already
    do). Freeing the copy's caches leaves the original's intact."""
    return dataclasses.replace(condition, cond_cache=condition.cond_cache.to(device),
                               uncond_cache=condition.uncond_cache.to(device),
                               marker_embeds=condition.marker_embeds.to(device))
