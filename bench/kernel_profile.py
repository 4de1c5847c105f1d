"""Where the GPU time of a short run goes: attention, matrix products, everything else, and how much
of the wall time the GPU was busy at all (a low share means the host cannot keep it fed)."""
from __future__ import annotations

import re
import time

import torch
from torch.profiler import ProfilerActivity, profile

_ATTENTION = re.compile(r"flash|fmha|cudnn|attention|sdpa|mha", re.I)
_MATMUL = re.compile(r"gemm|nvjet|xmma|cutlass|matmul|sm90_|splitk", re.I)
_SOFTMAX = re.compile(r"softmax", re.I)  # SDPA's math fallback shows as bmm + softmax


def category(kernel: str) -> str:
    if _ATTENTION.search(kernel):
        return "attention"
    if _MATMUL.search(kernel):
        return "matmul"
    if _SOFTMAX.search(kernel):
        return "softmax (math attention)"
    return "other"


def _device_seconds(entry) -> float:
    micros = getattr(entry, "self_device_time_total", None)
    if micros is None:
        micros = entry.self_cuda_time_total
    return micros / 1e6


def profile_kernels(fn, top: int = 12) -> dict:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_category: dict[str, float] = {}
    for entry in kernels:
        by_category[category(entry.key)] = by_category.get(category(entry.key), 0.0) + _device_seconds(entry)
    busy = sum(by_category.values())
    ranked = sorted(kernels, key=_device_seconds, reverse=True)[:top]
    return {
        "wall_s": wall, "kernel_s": busy, "gpu_busy_fraction": busy / wall if wall else None,
        "by_category_s": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "launches": sum(e.count for e in kernels),
        "top_kernels": [{"name": e.key[:160], "s": _device_seconds(e), "calls": e.count,
                         "category": category(e.key)} for e in ranked],
    }
