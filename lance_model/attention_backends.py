"""The attention kernels the LLM and the vision tower run on, chosen by name (the loader's ``attention``).

Every backend computes the two forms the model needs (their conventions: ``attention`` and
``varlen_attention``): ``prefix``, a query block over keys/values that end with the block, causal
(aligned bottom-right) or bidirectional, with grouped KV heads; and ``segments``, bidirectional
attention inside each segment of a packed sequence.

* ``sdpa``: torch's ``scaled_dot_product_attention`` (torch picks cuDNN, flash or memory-efficient).
* ``flash_attn``: flash-attn 2's ``flash_attn_func`` / ``flash_attn_varlen_func``.
* ``sage``: SageAttention's ``sageattn`` (Q·K in INT8: faster, not exact). It has no varlen form, so
  segments run one batched call per segment length; a causal block after a cached prefix needs an
  offset mask it cannot express, so such calls run on SDPA.
* ``auto``: SDPA on the CPU and on Hopper and newer GPUs, where SDPA's cuDNN kernel is ~1.6x faster
  than flash-attn on long blocks (~590 vs ~360 TFLOP/s on an H100); flash-attn on Ampere/Ada when
  installed.

The optional packages have fp16/bf16 CUDA kernels only; a call they cannot take runs on SDPA, and the
log says so once.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .varlen_attention import PackedSegments

AUTO = "auto"
BACKEND_NAMES = (AUTO, "sdpa", "flash_attn", "sage")
# Device types the optional packages ship kernels for.
OPTIONAL_KERNEL_DEVICES = ("cuda",)

_log = logging.getLogger(__name__)
_noted: set[str] = set()
_SDPA_HAS_GQA = torch.__version__ >= "2.5"


class SdpaBackend:
    name = "sdpa"
    graph_safe = True   # may run inside a CUDA graph capture (``cuda_graphs``)

    def prefix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        lq, lk = q.shape[0], k.shape[0]
        mask, is_causal = None, False
        if causal and lq == lk:
            is_causal = True
        elif causal and lq > 1:
            # SDPA's is_causal aligns top-left; a cached prefix needs the bottom-right band.
            offset = lk - lq
            mask = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + offset
        # (a single causal query after a prefix sees every key: no mask)
        qh, kh, vh = (t.to(_compute_dtype(q)).transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        extra = {}
        if kh.shape[1] != qh.shape[1]:
            if _SDPA_HAS_GQA:
                extra["enable_gqa"] = True
            else:
                group = qh.shape[1] // kh.shape[1]
                kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=is_causal, **extra)
        return out[0].transpose(0, 1).to(q.dtype)

    def segments(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: PackedSegments) -> torch.Tensor:
        # Segments of one length are stacked into a batch: a few calls per layer, no dense block mask.
        out = torch.empty_like(q)
        for index in segments.groups:
            # [segments, length, heads, dim] -> [segments, heads, length, dim]
            qg, kg, vg = (t[index].transpose(1, 2).to(_compute_dtype(q)) for t in (q, k, v))
            out[index] = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).to(q.dtype)
        return out


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    # CPUs gain nothing from half-precision attention, and fp32 is what the CPU stand-in for flash-attn
    # computed when the golden fixtures were made (GPU kernels round the softmax probabilities to bf16
    # before P·V; both stay within bf16 noise of each other).
    return torch.float32 if q.device.type == "cpu" else q.dtype


SDPA = SdpaBackend()


class FlashAttnBackend:
    name = "flash_attn"
    graph_safe = True   # fixed shapes in, no host synchronisation

    def __init__(self, module):
        self.func, self.varlen_func = module.flash_attn_func, module.flash_attn_varlen_func

    def prefix(self, q, k, v, causal):
        if not _kernel_takes(self.name, q):
            return SDPA.prefix(q, k, v, causal)
        # flash-attn aligns a causal mask bottom-right when Lq < Lk, as a cached prefix needs.
        return self.func(q[None], k[None], v[None], causal=causal)[0]

    def segments(self, q, k, v, segments):
        if not _kernel_takes(self.name, q):
            return SDPA.segments(q, k, v, segments)
        return self.varlen_func(q, k, v, segments.cu_seqlens, segments.cu_seqlens, segments.max_len,
                                segments.max_len)


class SageBackend:
    name = "sage"
    graph_safe = False  # not known to replay correctly in CUDA graphs: those passes run eagerly

    def __init__(self, module):
        self.sageattn = module.sageattn

    def prefix(self, q, k, v, causal):
        lq, lk = q.shape[0], k.shape[0]
        if causal and 1 < lq < lk:
            _note_once("attention 'sage' has no causal mask offset by a cached prefix: causal blocks after a "
                       "prefix (text after an image) run on SDPA")
            return SDPA.prefix(q, k, v, causal)
        if not _kernel_takes(self.name, q):
            return SDPA.prefix(q, k, v, causal)
        # "NHD": [batch, length, heads, dim]; a single causal query after a prefix sees every key.
        return self.sageattn(q[None], k[None], v[None], tensor_layout="NHD", is_causal=causal and lq == lk)[0]

    def segments(self, q, k, v, segments):
        if not _kernel_takes(self.name, q):
            return SDPA.segments(q, k, v, segments)
        out = torch.empty_like(q)
        for index in segments.groups:
            out[index] = self.sageattn(q[index], k[index], v[index], tensor_layout="NHD", is_causal=False)
        return out


AttentionBackend = SdpaBackend | FlashAttnBackend | SageBackend


@dataclass(frozen=True)
class _Package:
    module: str
    install: str
    functions: tuple[str, ...]
    backend: type


_OPTIONAL = {
    "flash_attn": _Package("flash_attn", "pip install flash-attn --no-build-isolation",
                           ("flash_attn_func", "flash_attn_varlen_func"), FlashAttnBackend),
    "sage": _Package("sageattention", "pip install sageattention", ("sageattn",), SageBackend),
}


def attention_backend(choice: str, device: torch.device | str) -> AttentionBackend:
    """The backend that runs ``choice`` (one of ``BACKEND_NAMES``) for tensors on ``device``."""
    name = resolve_backend_name(choice, device)
    if name == SDPA.name:
        return SDPA
    return _OPTIONAL[name].backend(_import(name))


def resolve_backend_name(choice: str, device: torch.device | str) -> str:
    """``choice`` with ``auto`` settled for ``device``; an optional backend must import (a clear error says
    which package to install otherwise)."""
    if choice not in BACKEND_NAMES:
        raise ValueError(f"attention must be one of {BACKEND_NAMES}, got {choice!r}")
    if choice == AUTO:
        return _auto(torch.device(device))
    if choice in _OPTIONAL:
        _import(choice)
    return choice


def installed_backends() -> list[str]:
    """``sdpa`` plus every optional backend whose package imports."""
    return [SDPA.name] + [name for name in _OPTIONAL if _importable(name)]


def _auto(device: torch.device) -> str:
    # flash-attn 2 needs Ampere or newer, and from Hopper on cuDNN's SDPA kernel is the faster one.
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 8 and _importable("flash_attn"):
        return "flash_attn"
    return SDPA.name


def _importable(name: str) -> bool:
    package = _OPTIONAL[name]
    try:
        module = importlib.import_module(package.module)
    except ImportError:
        return False
    return all(hasattr(module, f) for f in package.functions)


def _import(name: str):
    package = _OPTIONAL[name]
    try:
        module = importlib.import_module(package.module)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == package.module:
            raise ValueError(f"attention '{name}' needs the {package.module} package, which is not installed "
                             f"(installed: {', '.join(installed_backends())}); run '{package.install}' in the "
                             f"Python environment that runs Lance (ComfyUI's), or choose auto or sdpa") from None
        raise ValueError(f"attention '{name}': the {package.module} package is installed but does not import "
                         f"({type(error).__name__}: {error}); reinstall it for this torch and CUDA "
                         f"('{package.install}'), or choose auto or sdpa") from error
    missing = [f for f in package.functions if not hasattr(module, f)]
    if missing:
        raise ValueError(f"attention '{name}' needs {', '.join(missing)} from {package.module}, which this version "
                         f"lacks; upgrade it ('{package.install} --upgrade'), or choose auto or sdpa")
    return module


def _kernel_takes(name: str, q: torch.Tensor) -> bool:
    if q.dtype in (torch.float16, torch.bfloat16) and q.device.type in OPTIONAL_KERNEL_DEVICES:
        return True
    _note_once(f"attention '{name}' runs fp16/bf16 CUDA tensors only; {str(q.dtype).removeprefix('torch.')} "
               f"inputs on {q.device.type} run on SDPA")
    return False


def _note_once(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        _log.warning(message)
