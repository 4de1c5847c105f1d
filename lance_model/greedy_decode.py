"""Greedy text decoding that stays on the device (x2t with temperature 0, the reference's setting).

A decode step feeds one token through 36 layers: ~2,500 small kernels and no arithmetic to speak of,
so launching them from Python, growing the KV cache by concatenation and reading every picked token
back to the host (a sync per token) cost far more than the GPU work. Here the cache is a fixed buffer
written in place (``DecodeKVCache``), the position tables are computed once, the argmax and the
token's embedding stay on the device, and the step is replayed as one CUDA graph where possible
(``cuda_graphs``), its element-wise chains fused (``fused_ops``). The host reads the new tokens back
every ``SYNC_EVERY`` steps to look for the stop token, so up to that many steps past it are computed
and dropped.
"""
from __future__ import annotations

from typing import Callable

import torch

from .cuda_graphs import GraphedCall
from .kv_cache import DecodeKVCache, KVCache
from .mot import MoTDecoder, PassLayout

SYNC_EVERY = 16


@torch.no_grad()
def greedy_decode(decoder: MoTDecoder, prefix: KVCache, first_token: int, positions: torch.Tensor,
                  vocab_limit: int, stop_token: int, on_token: Callable[[int], None] | None = None,
                  sync_every: int = SYNC_EVERY) -> list[int]:
    """Feed ``first_token`` and then each picked token at the consecutive columns of ``positions``
    ``[3, steps]`` after the prefilled ``prefix`` (left unchanged); returns the picked ids before the
    first ``stop_token`` (at most ``steps``)."""
    steps = positions.shape[-1]
    device = decoder.und_device
    graphed = decoder.graphs_usable(with_generation=False)
    tables = decoder.prepare_pass(positions, fused=graphed)
    cache = DecodeKVCache(prefix, len(prefix) + steps, fused=tables.fused)
    token = torch.tensor([first_token], device=device)
    step = torch.zeros(1, dtype=torch.int64, device=device)
    picked = torch.empty(steps, dtype=torch.int64, device=device)

    def one_step() -> None:
        cache.begin_step()
        layout = PassLayout(tables.cos.index_select(0, step), tables.sin.index_select(0, step), None,
                            tables.fused)
        logits = decoder.logits(decoder.embed_tokens(token), None, cache, layout=layout)
        token.copy_(logits[0, :vocab_limit].argmax().view(1))   # ids beyond the tokenizer are never picked
        picked.index_copy_(0, step, token)
        cache.end_step()
        step.add_(1)

    run = GraphedCall(one_step, device) if graphed else one_step
    out: list[int] = []
    for done in range(1, steps + 1):
        run()
        if done % sync_every and done != steps:
            continue
        for token_id in picked[len(out):done].tolist():
            if token_id == stop_token:
                return out
            out.append(token_id)
            if on_token is not None:
                on_token(token_id)
    return out
