"""3-axis RoPE positions of a packed sample: Qwen2.5-VL ``get_rope_index`` plus Lance's "MaPE" edits
(spec §2.4).

Every visual block is a ``<|video_pad|>`` "video" block with one second per temporal grid slice, so
slice τ sits ``τ·tokens_per_second`` after the block's first temporal position. MaPE then moves the
ViT block to a temporal band starting at 1000 (a subject reference block to 2000) and gives an edit
target the positions of its source, token by token.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .config import LLMConfig
from .sequence import EDIT_SOURCE, FULL, FULL_NOISE, REFERENCE, TARGET, VIT, PackedSample

VIT_TEMPORAL_BAND = 1000
REFERENCE_TEMPORAL_BAND = 2000


def get_rope_index(token_ids: torch.Tensor, rope_grids: Sequence[Sequence[int]], cfg: LLMConfig) -> torch.Tensor:
    """Positions ``[3, L]`` (temporal, height, width) of one sequence.

    Text tokens count up by one on all three axes. A block whose first ``<|video_pad|>`` follows text
    ending at position p gets ``(p+1+τ·tps, p+1+i, p+1+j)`` for its merged grid token (τ, i, j); the text
    after it continues from the block's largest position + 1. ``rope_grids`` lists each block's
    ``(t, H, W)`` before the spatial merge, in sequence order.
    """
    ids = token_ids.tolist()
    starts = [k for k in range(len(ids) - 1) if ids[k] == cfg.vision_start_token_id
              and ids[k + 1] == cfg.video_token_id]
    if len(starts) != len(rope_grids):
        raise ValueError(f"the sequence has {len(starts)} visual blocks but {len(rope_grids)} grids were given "
                         f"(do the tokenizer and llm_config.json come from the same checkpoint?)")
    merge, tps = cfg.spatial_merge_size, cfg.tokens_per_second
    pieces: list[torch.Tensor] = []
    next_pos = 0
    cursor = 0
    for grid in rope_grids:
        first_pad = ids.index(cfg.video_token_id, cursor)
        t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
        text_len = first_pad - cursor
        pieces.append(torch.arange(text_len).expand(3, -1) + next_pos)
        tau, i, j = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        block = torch.stack([tau.flatten() * tps, i.flatten(), j.flatten()]) + next_pos + text_len
        pieces.append(block)
        next_pos = int(block.max()) + 1
        cursor = first_pad + t * h * w
    if cursor < len(ids):
        pieces.append(torch.arange(len(ids) - cursor).expand(3, -1) + next_pos)
    return torch.cat(pieces, dim=1).to(torch.int64)


def apply_mape(positions: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """MaPE edits on ``get_rope_index`` positions (a new tensor; later tokens are not renumbered)."""
    out = positions.clone()
    for band_modality, band in ((VIT, VIT_TEMPORAL_BAND), (REFERENCE, REFERENCE_TEMPORAL_BAND)):
        members = modality == band_modality
        if members.any():
            first = int(torch.nonzero(members)[0])
            out[0, members] += band - out[0, first]
    source, target = modality == EDIT_SOURCE, modality == TARGET
    # The reference ties the target to the source whenever both blocks have the same token count.
    if source.any() and int(source.sum()) == int(target.sum()):
        out[:, target] = out[:, source]
    return out


def rope_grids(sample: PackedSample, cfg: LLMConfig) -> list[tuple[int, int, int]]:
    return [b.rope_grid(cfg.spatial_merge_size) for b in sample.blocks]


def generation_positions(sample: PackedSample, cfg: LLMConfig) -> torch.Tensor:
    """Positions used by the generation paths: MaPE applies to samples with a ViT or clean-latent split."""
    positions = get_rope_index(sample.token_ids, rope_grids(sample, cfg), cfg)
    if any(mode in (FULL, FULL_NOISE) for mode in sample.attn_modes):
        positions = apply_mape(positions, sample.modality)
    return positions


def understanding_positions(sample: PackedSample, cfg: LLMConfig, pad_token_id: int,
                            max_new_tokens: int) -> torch.Tensor:
    """Positions ``[3, L + max_new_tokens]`` for x2t decoding: plain ``get_rope_index`` (no MaPE) over the
    prompt followed by ``max_new_tokens`` pad tokens, so generated token k sits at index ``L + k``."""
    pads = torch.full((max_new_tokens,), pad_token_id, dtype=torch.int64)
    return get_rope_index(torch.cat([sample.token_ids, pads]), rope_grids(sample, cfg), cfg)
