"""The ComfyUI internals the nodes rely on, looked up when called and feature-detected.

Nothing here is imported at module import: internals move between ComfyUI releases (0.3.75 has only
``ModelPatcher``, newer ones add ``CoreModelPatcher`` and dynamic VRAM), and looking them up at call
time also lets tests replace a function such as ``load_models_gpu`` on the module.
"""
from __future__ import annotations

import importlib

import torch

from . import fp8_storage


def memory_manager():
    return importlib.import_module("comfy.model_management")


def patcher_class():
    model_patcher = importlib.import_module("comfy.model_patcher")
    # Newer ComfyUI wants custom models on CoreModelPatcher (dynamic VRAM aware); 0.3.75 has only ModelPatcher.
    return getattr(model_patcher, "CoreModelPatcher", None) or model_patcher.ModelPatcher


def load_device() -> torch.device:
    return memory_manager().get_torch_device()


def offload_device() -> torch.device:
    return memory_manager().unet_offload_device()


def intermediate_device() -> torch.device:
    return memory_manager().intermediate_device()


def make_patcher(module: torch.nn.Module):
    """A patcher that lets ComfyUI's memory manager place ``module`` (built on the offload device)."""
    manager = memory_manager()
    archive = getattr(manager, "archive_model_dtypes", None)
    if archive is not None:  # newer releases cast on load from the dtypes recorded here
        archive(module)
    return patcher_class()(module, load_device=manager.get_torch_device(), offload_device=manager.unet_offload_device())


def load_models(patchers, memory_required: int = 0) -> None:
    """Ask the memory manager to place ``patchers`` on the compute device (it evicts what must go)."""
    memory_manager().load_models_gpu(list(patchers), memory_required=memory_required)


def operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype, fp8_matmul: bool = False):
    """ComfyUI's layer classes for weights stored in ``weight_dtype`` and computed in ``compute_dtype``;
    ``fp8_matmul`` asks for fp8 matrix multiplications where the load device can do them."""
    ops = importlib.import_module("comfy.ops")
    if weight_dtype == compute_dtype:
        return ops.disable_weight_init
    fast = fp8_matmul and memory_manager().supports_fp8_compute(load_device())
    scaled = fp8_storage.scaled_operations(ops, fast)
    if scaled is not None:
        return scaled
    pick = getattr(ops, "pick_operations", None)
    if pick is None:
        return ops.manual_cast
    # Unscaled fp8: fp8 matmuls when asked (or by ComfyUI's --fast flags), else weights cast on the fly.
    return pick(weight_dtype, compute_dtype, load_device=load_device(), fp8_optimizations=fast)


def throw_if_interrupted() -> None:
    memory_manager().throw_exception_if_processing_interrupted()


def progress_bar(total: int):
    return importlib.import_module("comfy.utils").ProgressBar(total)


def wan22_previewer():
    """ComfyUI's latent previewer for Wan 2.2 latents (None when previews are off). Lance's normalised
    latent equals ComfyUI's ``Wan22.process_in`` space, which is what previewers expect."""
    latent_formats = importlib.import_module("comfy.latent_formats")
    latent_preview = importlib.import_module("latent_preview")
    return latent_preview.get_previewer(load_device(), latent_formats.Wan22())
