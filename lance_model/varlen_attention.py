"""Bidirectional attention over a packed sequence of independent segments (``cu_seqlens``).

The vision tower attends inside windows and temporal slices: many short segments that share a few
lengths. Without flash-attn, segments of equal length are stacked into one batched SDPA call, so the
cost is a handful of kernel launches per layer (no Python loop over windows, no dense block mask).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

try:  # optional dependency; only its CUDA kernels are used
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


class PackedSegments:
    """Segment layout of a packed sequence, built once per forward and shared by all layers."""

    def __init__(self, lengths: Sequence[int], device: torch.device | str | None = None):
        lengths = [int(n) for n in lengths if int(n) > 0]
        if not lengths:
            raise ValueError("a packed sequence needs at least one non-empty segment")
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        self.total = starts[-1]
        self.max_len = max(lengths)
        self.cu_seqlens = torch.tensor(starts, dtype=torch.int32, device=device)
        by_length: dict[int, list[int]] = {}
        for start, n in zip(starts, lengths):
            by_length.setdefault(n, []).append(start)
        # one [segments, length] gather index per distinct length
        self.groups = [
            (torch.tensor(group_starts, device=device)[:, None] + torch.arange(n, device=device)[None, :])
            for n, group_starts in by_length.items()
        ]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: PackedSegments) -> torch.Tensor:
    """``q, k, v``: [tokens, heads, head_dim]; each token attends to every token of its own segment.
    Returns [tokens, heads, head_dim] in ``q``'s dtype; softmax scale 1/sqrt(head_dim)."""
    if q.shape[0] != segments.total:
        raise ValueError(f"packed sequence has {q.shape[0]} tokens but the segments cover {segments.total}")
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return flash_attn_varlen_func(q, k, v, segments.cu_seqlens, segments.cu_seqlens,
                                      segments.max_len, segments.max_len)
    # CPU kernels gain little from half precision; fp32 there also matches flash-attn's fp32 softmax
    compute = q.dtype if q.is_cuda else torch.float32
    out = torch.empty_like(q)
    for index in segments.groups:
        # [segments, length, heads, dim] -> [segments, heads, length, dim]
        qg, kg, vg = (t[index].transpose(1, 2).to(compute) for t in (q, k, v))
        out[index] = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).to(q.dtype)
    return out
