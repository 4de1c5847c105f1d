"""The loader's attention option: the kernels of ``lance_model.attention_backends``, checked when the model
loads and ``auto`` settled for the device ComfyUI computes on."""
from __future__ import annotations

from ..lance_model.attention_backends import BACKEND_NAMES, resolve_backend_name
from . import comfy_runtime

ATTENTION_OPTIONS = BACKEND_NAMES


def resolve_attention(choice: str) -> str:
    """The kernel to run for ``choice``; a clear error names the package to install when it is missing."""
    return resolve_backend_name(choice, comfy_runtime.load_device())
