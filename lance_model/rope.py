"""3-axis multimodal RoPE (MRoPE) of the Lance LLM.

Each token carries a (temporal, height, width) position. The head's frequency pairs are split into
three bands (``mrope_section``, counted in pairs); band ``a`` rotates by the token's position on axis
``a``. Rotation is NeoX style (``rotate_half``) over two copies of the angles.

The reference casts the whole model to bf16, which rounds the (non-persistent) ``inv_freq`` buffer
as well; the released weights were trained with that rounding, so it is part of the model (spec §8).
Angles, cos and sin are then computed in fp32 and cast to the hidden-state dtype.
"""
from __future__ import annotations

import torch


def mrope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Per-pair inverse frequencies, rounded through bf16 and returned as fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return (1.0 / (theta ** exponent)).to(torch.bfloat16).float()


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section, dtype: torch.dtype):
    """cos/sin tables ``[L, head_dim]`` for ``positions`` ``[3, L]`` (int), cast to ``dtype``."""
    if positions.dim() != 2 or positions.shape[0] != 3:
        raise ValueError(f"MRoPE positions must have shape [3, L], got {list(positions.shape)}")
    if sum(mrope_section) != inv_freq.numel():
        raise ValueError(f"mrope_section {list(mrope_section)} must sum to {inv_freq.numel()} frequency pairs")
    inv_freq = inv_freq.to(positions.device)
    angles = positions.float()[:, :, None] * inv_freq[None, None, :]  # [3, L, pairs]
    # Pair k takes its angle from the axis whose band contains k.
    axis_of_pair = torch.repeat_interleave(torch.arange(3, device=positions.device),
                                           torch.tensor(list(mrope_section), device=positions.device))
    angles = angles.gather(0, axis_of_pair[None, None, :].expand(1, angles.shape[1], -1))[0]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[L, heads, head_dim]``; arithmetic runs in the promoted dtype of ``x`` and the
    tables (bf16 for bf16 ``x``, fp32 for fp32 ``x`` with bf16 tables)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin
