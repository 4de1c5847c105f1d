"""Give a module built on the meta device real storage and random weights, fast, on the target device.

The scale keeps activations in the range trained weights produce (nothing overflows, nothing is
zero, which would make matrix units look faster than they are): weights N(0, 1/fan_in), residual
output projections shrunk by 1/sqrt(2·layers), norm scales 1, biases 0, scalar parameters (the
per-tensor scales of ComfyUI's scaled fp8 layers, set properly when the weights are converted) 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def _is_scale(name: str, param: torch.Tensor) -> bool:
    # RMSNorm weights (1-D), the Wan VAE's RMS_norm ``gamma`` ([C,1,1,1]) and scalars
    return name.endswith("gamma") or param.dim() == 0 or (name.endswith("weight") and param.dim() == 1)


@torch.no_grad()
def materialize_random_(module: nn.Module, device, seed: int, residual_layers: int = 1) -> nn.Module:
    module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    residual_scale = 1.0 / math.sqrt(2 * residual_layers)
    for name, param in module.named_parameters():
        if _is_scale(name, param):
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            std = 1.0 / math.sqrt(param[0].numel())
            if any(part in name for part in RESIDUAL_OUTPUTS):
                std *= residual_scale
            param.normal_(0.0, std, generator=generator)
    for buffer in module.buffers():
        buffer.zero_()
    return module.requires_grad_(False).eval()
