"""Test-only ComfyUI nodes for the reliability tests; never shipped (it lives under tests/ and is
linked into a private test server's custom_nodes only).

- LanceTestImageLayout turns an RGB IMAGE into the layouts no core node makes: RGBA with a given
  alpha, or one gray channel.
- LanceTestArmSamplerOOM makes the next Lance Sampler run raise CUDA's out-of-memory error after its
  first step, as a GPU that runs out of memory mid-sampling would.
- LanceTestReleaseFreeMemory runs the garbage collector and hands the C allocator's free pages back to
  the system, so the server's resident memory then measures what is still in use (not what glibc keeps
  cached, which moves by tens of MB between identical runs).
"""
from __future__ import annotations

import ctypes
import gc
import sys

import torch

SAMPLER_MODULE_SUFFIX = ".nodes.sampler"
INJECTED_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB (injected by LanceTestArmSamplerOOM)"


class LanceTestImageLayout:
    CATEGORY = "Lance/tests"
    FUNCTION = "convert"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "layout": (["rgba", "gray"],),
                             "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})}}

    def convert(self, image: torch.Tensor, layout: str, alpha: float):
        if layout == "gray":
            return (image[..., :1].clone(),)
        return (torch.cat([image, torch.full_like(image[..., :1], alpha)], dim=-1),)


def _lance_sampler_modules() -> list:
    """The Lance pack's sampler module(s) as ComfyUI imported them (named after the pack's folder)."""
    return [m for name, m in list(sys.modules.items()) if name.endswith(SAMPLER_MODULE_SUFFIX)
            and hasattr(m, "LanceSampler") and hasattr(m, "sample_latent")]


class _EveryPromptAction:
    """An output node without inputs that runs on every prompt (ComfyUI would otherwise cache it)."""

    CATEGORY = "Lance/tests"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls):
        return float("nan")  # never equal to the last value, so never cached


class LanceTestArmSamplerOOM(_EveryPromptAction):
    FUNCTION = "arm"

    def arm(self):
        modules = _lance_sampler_modules()
        if not modules:
            raise RuntimeError("the Lance pack's nodes.sampler module is not loaded")
        for module in modules:
            real = getattr(module.sample_latent, "__wrapped__", module.sample_latent)

            def sample_once_then_fail(*args, _module=module, _real=real, **kwargs):
                _module.sample_latent = _real  # one-shot: the next run samples normally
                step_callback = kwargs["callback"]

                def callback(step, x0):
                    step_callback(step, x0)
                    raise torch.OutOfMemoryError(INJECTED_MESSAGE)

                return _real(*args, **{**kwargs, "callback": callback})

            sample_once_then_fail.__wrapped__ = real
            module.sample_latent = sample_once_then_fail
        return {"ui": {"text": [f"armed {len(modules)}"]}}


class LanceTestReleaseFreeMemory(_EveryPromptAction):
    FUNCTION = "release"

    def release(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return {"ui": {"text": ["released"]}}


NODE_CLASS_MAPPINGS = {"LanceTestImageLayout": LanceTestImageLayout, "LanceTestArmSamplerOOM": LanceTestArmSamplerOOM,
                       "LanceTestReleaseFreeMemory": LanceTestReleaseFreeMemory}
