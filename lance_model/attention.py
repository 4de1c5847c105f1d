"""The LLM's attention: one query block attending to itself and a cached key/value prefix.

The query block is always the *last* ``Lq`` rows of the keys (prefix first, then the block), so a
causal block is aligned bottom-right: query ``i`` sees keys ``0 .. Lk - Lq + i``. A bidirectional
block sees the whole prefix and the whole block. GQA: ``Hq`` query heads share ``Hkv`` key/value heads
in consecutive groups.

flash-attn (optional) is used when importable and the inputs suit it, except on Hopper and newer GPUs,
where SDPA's cuDNN kernel is ~1.6x faster on long blocks (~590 vs ~360 TFLOP/s on an H100); otherwise
torch SDPA. On the
CPU, SDPA runs in fp32: CPUs gain nothing from bf16 attention, and fp32 is what the CPU stand-in for
flash-attn computed when the golden fixtures were made (GPU kernels instead round the softmax
probabilities to bf16 before P·V; both stay within bf16 noise of each other).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # optional accelerator
    flash_attn_varlen_func = None

_SDPA_HAS_GQA = torch.__version__ >= "2.5"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """``q`` ``[Lq, Hq, D]``, ``k``/``v`` ``[Lk, Hkv, D]`` with ``Lk >= Lq`` → ``[Lq, Hq, D]``."""
    lq, hq, _ = q.shape
    lk, hkv, _ = k.shape
    if lk < lq or hq % hkv:
        raise ValueError(f"attention needs Lk >= Lq and Hq a multiple of Hkv; got q {list(q.shape)}, "
                         f"k {list(k.shape)}")
    if _flash_suits(q):
        return _flash(q, k, v, causal)
    return _sdpa(q, k, v, causal)


def _flash_suits(q: torch.Tensor) -> bool:
    return (flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(q.device)[0] < 9)


def attention_to_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``q`` ``[Lq, Hq, D]`` attending (without a causal band) to the keys flagged in ``valid`` ``[Lk]``
    of ``k``/``v`` ``[Lk, Hkv, D]``: a fixed-shape read of a partly written buffer, in fp32 (a decode
    step is a handful of rows, so exactness costs nothing)."""
    lq, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    qg = q.float().unflatten(1, (hkv, group)).permute(1, 0, 2, 3).flatten(1, 2)   # [Hkv, Lq·group, D]
    scores = qg @ k.float().permute(1, 2, 0) * d ** -0.5                           # [Hkv, Lq·group, Lk]
    probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    out = probs @ v.float().transpose(0, 1)                                        # [Hkv, Lq·group, D]
    return out.unflatten(1, (lq, group)).permute(1, 0, 2, 3).flatten(1, 2).to(q.dtype)


def _flash(q, k, v, causal):
    # flash-attn aligns a causal mask bottom-right when Lq < Lk, as required.
    cu_q = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0, k.shape[0]], dtype=torch.int32, device=q.device)
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, q.shape[0], k.shape[0], causal=causal)


def _sdpa(q, k, v, causal):
    lq, lk = q.shape[0], k.shape[0]
    mask, is_causal = None, False
    if causal and lq == lk:
        is_causal = True
    elif causal and lq > 1:
        # SDPA's is_causal aligns top-left; a cached prefix needs the bottom-right band.
        offset = lk - lq
        mask = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + offset
    # (a single causal query after a prefix sees every key: no mask)
    compute_dtype = torch.float32 if q.device.type == "cpu" else q.dtype
    qh, kh, vh = (t.to(compute_dtype).transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    extra = {}
    if kh.shape[1] != qh.shape[1]:
        if _SDPA_HAS_GQA:
            extra["enable_gqa"] = True
        else:
            group = qh.shape[1] // kh.shape[1]
            kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=is_causal, **extra)
    return out[0].transpose(0, 1).to(q.dtype)
