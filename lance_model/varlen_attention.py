"""Bidirectional attention over a packed sequence of independent segments (``cu_seqlens``).

The vision tower attends inside windows and temporal slices: many short segments that share a few
lengths, so the layout groups the segments by length (for kernels without a varlen form) besides the
``cu_seqlens`` offsets (for those with one). The kernel is an ``attention_backends`` choice.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .attention_backends import SDPA, AttentionBackend


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


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: PackedSegments,
                     backend: AttentionBackend = SDPA) -> torch.Tensor:
    """``q, k, v``: [tokens, heads, head_dim]; each token attends to every token of its own segment.
    Returns [tokens, heads, head_dim] in ``q``'s dtype; softmax scale 1/sqrt(head_dim)."""
    if q.shape[0] != segments.total:
        raise ValueError(f"packed sequence has {q.shape[0]} tokens but the segments cover {segments.total}")
    return backend.segments(q, k, v, segments)
