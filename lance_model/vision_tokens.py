"""Step: an image or the sampled frames of a clip -> the ViT tokens that fill a visual block of the LLM
sequence (the edit tasks' source block and the x2t block)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .preprocess import vit_input
from .vit import VisionTower


@dataclass(frozen=True, eq=False)
class VisionTokens:
    embeds: torch.Tensor            # [n, hidden] merged ViT tokens, in sequence order
    grid: tuple[int, int, int]      # patch grid (temporal patches, H/14, W/14) of the block


@torch.no_grad()
def encode_vision(vit: VisionTower, media, side: int, device=None, attention: str = "auto") -> VisionTokens:
    """ViT tokens of ``media`` (anything ``preprocess.rgb_frames`` accepts: one image, or the clip's frames
    as the frame sampler picked them) resized to the bucket of area ``side²`` (a preset's ``vit`` side).

    ``device`` is where the tower computes (default: where its weights are); ``attention`` names the
    kernel (``attention_backends``)."""
    pixels = vit_input(media, side, vit.config)
    device = device if device is not None else next(vit.parameters()).device
    return VisionTokens(vit(pixels.patches.to(device), [pixels.grid_thw], attention=attention), pixels.grid_thw)
