"""The LLM's attention: one query block attending to itself and a cached key/value prefix.

The query block is always the *last* ``Lq`` rows of the keys (prefix first, then the block), so a
causal block is aligned bottom-right: query ``i`` sees keys ``0 .. Lk - Lq + i``. A bidirectional
block sees the whole prefix and the whole block. GQA: ``Hq`` query heads share ``Hkv`` key/value heads
in consecutive groups. The kernel is the decoder's ``attention_backends`` choice.
"""
from __future__ import annotations

import torch

from .attention_backends import SDPA, AttentionBackend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
              backend: AttentionBackend = SDPA) -> torch.Tensor:
    """``q`` ``[Lq, Hq, D]``, ``k``/``v`` ``[Lk, Hkv, D]`` with ``Lk >= Lq`` → ``[Lq, Hq, D]``."""
    lq, hq, _ = q.shape
    lk, hkv, _ = k.shape
    if lk < lq or hq % hkv:
        raise ValueError(f"attention needs Lk >= Lq and Hq a multiple of Hkv; got q {list(q.shape)}, "
                         f"k {list(k.shape)}")
    return backend.prefix(q, k, v, causal)


def attention_to_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``q`` ``[Lq, Hq, D]`` attending (without a causal band) to the keys flagged in ``valid`` ``[Lk]``
    of ``k``/``v`` ``[Lk, Hkv, D]``: a fixed-shape read of a partly written buffer, in fp32 (a decode
    step is a handful of rows, so exactness costs nothing). No backend takes a mask over a buffer, so
    decode steps run this whatever the backend."""
    lq, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    qg = q.float().unflatten(1, (hkv, group)).permute(1, 0, 2, 3).flatten(1, 2)   # [Hkv, Lq·group, D]
    scores = qg @ k.float().permute(1, 2, 0) * d ** -0.5                           # [Hkv, Lq·group, Lk]
    probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    out = probs @ v.float().transpose(0, 1)                                        # [Hkv, Lq·group, D]
    return out.unflatten(1, (lq, group)).permute(1, 0, 2, 3).flatten(1, 2).to(q.dtype)
