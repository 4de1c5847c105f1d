"""Prefix key/value cache of the LLM: per layer, the keys and values (after QK-norm and RoPE, in the
compute dtype) of every token processed so far, in sequence order."""
from __future__ import annotations

import torch

from . import fused_ops
from .attention import attention, attention_to_rows
from .attention_backends import SDPA, AttentionBackend


class KVCache:
    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def layer(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[index], self.values[index]

    def store(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace layer ``index`` with the full (prefix + new tokens) keys/values."""
        self.keys[index], self.values[index] = keys, values

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
               keep: bool, backend: AttentionBackend = SDPA) -> torch.Tensor:
        """Attention of layer ``index``'s queries over its cached prefix followed by the new ``k``/``v``
        (appended to the cache when ``keep``), computed by ``backend``."""
        past_k, past_v = self.layer(index)
        if past_k is not None:
            k, v = torch.cat([past_k, k]), torch.cat([past_v, v])
        if keep:
            self.store(index, k, v)
        return attention(q, k, v, causal, backend)

    def fork(self) -> "KVCache":
        """An independent cache that starts with the same prefix. Cheap: stored tensors are never
        modified in place, so both caches share them until one grows."""
        other = KVCache(self.num_layers)
        other.keys, other.values = list(self.keys), list(self.values)
        return other

    def to(self, device) -> "KVCache":
        moved = KVCache(self.num_layers)
        moved.keys = [None if k is None else k.to(device) for k in self.keys]
        moved.values = [None if v is None else v.to(device) for v in self.values]
        return moved

    def free(self) -> None:
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers

    def clone(self) -> "KVCache":
        """A copy that owns its tensors (unaffected by ``free`` of this cache)."""
        copied = KVCache(self.num_layers)
        copied.keys = [None if k is None else k.clone() for k in self.keys]
        copied.values = [None if v is None else v.clone() for v in self.values]
        return copied

    def copy_from(self, other: "KVCache") -> None:
        """Overwrite this cache's tensors in place with ``other``'s (same shapes), keeping their addresses."""
        for mine, theirs in zip(self.keys + self.values, other.keys + other.values):
            if mine is not None:
                mine.copy_(theirs)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class DecodeKVCache:
    """A prefix cache grown one token per step in place, for text decoding: each layer's buffer is sized
    for the prompt plus every new token, the next row to write is a device tensor, and attention reads
    the whole buffer with the unwritten rows masked. A decode step thus has fixed shapes, no host
    sync and no allocation that grows, so it can be replayed as a CUDA graph. ``fused``: its attention
    as fused kernels (``fused_ops``)."""

    def __init__(self, prefix: KVCache, capacity: int, fused: bool = False):
        if len(prefix) == 0:
            raise ValueError("decoding needs a prefilled prompt cache; prefill the prompt first")
        if capacity < len(prefix):
            raise ValueError(f"capacity {capacity} is below the prompt's {len(prefix)} cached tokens")
        self.keys = [_grown(k, capacity) for k in prefix.keys]
        self.values = [_grown(v, capacity) for v in prefix.values]
        device = self.keys[0].device
        self.next_row = torch.tensor([len(prefix)], device=device)
        self._rows = torch.arange(capacity, device=device)
        self.valid = self._rows <= self.next_row
        self._attention = fused_ops.attention_to_rows if fused else attention_to_rows

    def begin_step(self) -> None:
        """Unmask the row the step's token is written to."""
        torch.le(self._rows, self.next_row, out=self.valid)

    def end_step(self) -> None:
        self.next_row += 1

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
               keep: bool, backend: AttentionBackend = SDPA) -> torch.Tensor:
        """``KVCache.attend`` for one new token; its masked read of the buffer is exact fp32 whatever the
        ``backend`` (see ``attention_to_rows``)."""
        if q.shape[0] != 1 or not keep:
            raise ValueError("DecodeKVCache takes one new token per step, kept in the cache")
        self.keys[index].index_copy_(0, self.next_row, k)
        self.values[index].index_copy_(0, self.next_row, v)
        return self._attention(q, self.keys[index], self.values[index], self.valid)


def _grown(t: torch.Tensor, capacity: int) -> torch.Tensor:
    out = t.new_zeros((capacity,) + tuple(t.shape[1:]))
    out[:t.shape[0]] = t
    return out
