"""Prefix key/value cache of the LLM: per layer, the keys and values (after QK-norm and RoPE, in the
compute dtype) of every token processed so far, in sequence order."""
from __future__ import annotations

import torch


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

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
