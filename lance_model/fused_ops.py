"""The decoder's element-wise chains as fused GPU kernels (``torch.compile``): RMSNorm (6 kernels → 1),
QK-norm in the pass's dtype, MRoPE with its cast (6 → 1), SwiGLU's ``silu(gate)·up`` (2 → 1) and the
decode step's masked attention (casts, scale, mask and softmax around its two matrix products).

Each function is the eager arithmetic of ``layers.RMSNorm`` / ``rope.apply_rope`` / ``layers.SwiGLU``
with the same casts, compiled with explicit casts kept (``emulate_precision_casts``), so a fused pass
rounds where the eager one does. A compiled call costs more host time than the launches it saves, so
the decoder fuses only where host time is hidden: passes replayed as CUDA graphs, and blocks long
enough to keep the GPU busy (``prepare_pass(fused=True)``). CUDA only; ``LANCE_FUSED_OPS=0`` turns it
off, and a compile failure falls back to the eager functions with a warning.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from .attention import attention_to_rows as _attention_to_rows
from .rope import apply_rope

DISABLE_ENV = "LANCE_FUSED_OPS"

_COMPILED: dict[str, object] = {}
_FAILED: list[bool] = []


def fused_ops_usable(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(DISABLE_ENV, "1") != "0" and not _FAILED


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    x = x.to(dtype)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(dtype) * x32.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return apply_rope(x, cos, sin).to(dtype)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


_EAGER = {"rms_norm": _rms_norm, "rope": _rope, "silu_mul": _silu_mul, "attention_to_rows": _attention_to_rows}


def _call(name: str, *args):
    if _FAILED:
        return _EAGER[name](*args)
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_EAGER[name], dynamic=True, options={"emulate_precision_casts": True})
    try:
        return _COMPILED[name](*args)
    except Exception as error:  # a missing compiler toolchain must not stop generation
        _FAILED.append(True)
        warnings.warn(f"fused element-wise kernels unavailable, using eager ones ({type(error).__name__}: "
                      f"{error}); set {DISABLE_ENV}=0 to skip the attempt", RuntimeWarning, stacklevel=3)
        return _EAGER[name](*args)


def rms_norm(norm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``norm(x.to(dtype))`` for a ``layers.RMSNorm`` ``norm``, as one kernel."""
    return _call("rms_norm", x, norm.weight.to(x.device), norm.eps, dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``apply_rope(x, cos, sin).to(dtype)`` as one kernel."""
    return _call("rope", x, cos, sin, dtype)


def swiglu(ffn, x: torch.Tensor) -> torch.Tensor:
    """``ffn(x)`` for a ``layers.SwiGLU``, its projections called as modules, the activation fused."""
    return ffn.down_proj(_call("silu_mul", ffn.gate_proj(x), ffn.up_proj(x)))


def attention_to_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``attention.attention_to_rows`` with its element-wise work fused."""
    return _call("attention_to_rows", q, k, v, valid)
