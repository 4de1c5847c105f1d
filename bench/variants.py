"""Settings a benchmark run can be measured under, each a context manager around the run.

* ``default``: the code as users run it.
* ``cudnn-first``: SDPA tries cuDNN attention before flash, mem-efficient and math.
* ``eager``: CUDA graphs off (``LANCE_CUDA_GRAPHS=0``), every pass launched from Python: the reference
  the graphed passes of ``default`` are compared with.
* ``unfused``: the library's fused element-wise kernels off (``LANCE_FUSED_OPS=0``).
* ``fused-elementwise``: a probe for a proposed change, not a user setting. The element-wise chains
  of ``RMSNorm``, MRoPE and SwiGLU's ``silu(gate)·up`` run as ``torch.compile``d kernels with the same
  arithmetic (the functions below mirror ``lance_model.layers`` / ``lance_model.rope``; the run's
  output is compared with the default run's to confirm it computes the same function).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

VARIANTS = ("default", "eager", "unfused", "cudnn-first", "fused-elementwise")


def variant_setting(name: str):
    if name == "default":
        return contextlib.nullcontext()
    if name == "eager":
        from lance_model.cuda_graphs import DISABLE_ENV
        return _environment(DISABLE_ENV, "0")
    if name == "unfused":
        from lance_model.fused_ops import DISABLE_ENV
        return _environment(DISABLE_ENV, "0")
    if name == "cudnn-first":
        return _cudnn_first()
    if name == "fused-elementwise":
        return _fused_elementwise()
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


@contextlib.contextmanager
def _environment(name: str, value: str):
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def _cudnn_first():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6 cannot reorder: allow cuDNN and the math fallback only
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@contextlib.contextmanager
def _fused_elementwise():
    from lance_model import layers, mot, rope

    rms_norm = torch.compile(_rms_norm, dynamic=True)
    silu_mul = torch.compile(_silu_mul, dynamic=True)
    saved = layers.RMSNorm.forward, layers.SwiGLU.forward, mot.apply_rope
    layers.RMSNorm.forward = lambda self, x: rms_norm(x, self.weight.to(x.device), self.eps)
    layers.SwiGLU.forward = lambda self, x: self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
    mot.apply_rope = torch.compile(rope.apply_rope, dynamic=True)
    try:
        yield
    finally:
        layers.RMSNorm.forward, layers.SwiGLU.forward, mot.apply_rope = saved
