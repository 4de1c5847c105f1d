"""fp8 storage of matmul weights with one scale per tensor, through ComfyUI's scaled-fp8 layers.

A plain cast to float8_e4m3fn loses small weights: its smallest normal is 2^-6 and its smallest
subnormal 2^-9, while LLM weights have a std of about 0.02 and output projections far less, so many
become 0 or keep one or two bits. Dividing each tensor by ``amax / finfo.max`` first puts its largest
weight at the top of the fp8 range, so every weight keeps e4m3's 3-bit relative precision; ComfyUI's
``scaled_fp8_ops`` layers multiply the scale back in when they compute.

ComfyUI releases after Comfy-Org/ComfyUI#11000 no longer have ``scaled_fp8_ops`` (scaled fp8 moved to
``mixed_precision_ops``, configured per layer by ``comfy_quant`` entries in the loaded state dict, an
interface that has changed between releases). There the weights are stored by a plain cast, with a
warning that names the quality cost.
"""
from __future__ import annotations

import functools
import logging

import torch


def scaled_operations(comfy_ops, fp8_matmul: bool):
    """ComfyUI's scaled-fp8 layer classes (matmuls in fp8 when ``fp8_matmul``, else weights cast to the
    activations' dtype on the fly), or None when this ComfyUI has none."""
    factory = getattr(comfy_ops, "scaled_fp8_ops", None)
    if factory is None:
        return None
    base = factory(fp8_matrix_mult=fp8_matmul, scale_input=False)

    class LanceScaledFP8Ops(base):
        class Linear(base.Linear):
            def reset_parameters(self):
                # The scale comes from the weight once it is loaded (store_scaled). Until then the layer
                # has exactly the checkpoint's parameters, so strict loading and meta-device
                # materialisation see no extra one. Activations stay unscaled (ComfyUI clamps them to
                # the fp8 range for fp8 matmuls).
                self.scale_weight = None
                self.scale_input = None

            def forward_comfy_cast_weights(self, input):
                if self.scale_weight is None:  # a layer whose weight was left unquantized (the vision tower)
                    return super(base.Linear, self).forward_comfy_cast_weights(input)
                return super().forward_comfy_cast_weights(input)

    return LanceScaledFP8Ops


def weight_scale(weight: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    """The float32 scale that maps ``weight``'s largest magnitude to ``fp8_dtype``'s largest value (1 for
    an all-zero weight, which any scale stores exactly)."""
    amax = weight.detach().abs().amax().float()
    return torch.where(amax > 0, amax / torch.finfo(fp8_dtype).max, torch.ones_like(amax))


def quantize(weight: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``q * scale`` ~= ``weight``: q in ``fp8_dtype``, scale a float32 scalar."""
    scale = weight_scale(weight, fp8_dtype)
    limit = torch.finfo(fp8_dtype).max
    # float32 keeps the division exact enough that only the fp8 rounding remains; the clamp guards the
    # amax element against rounding just past the largest finite fp8 value (which would become NaN).
    scaled = (weight.detach().float() / scale).clamp_(-limit, limit)
    return scaled.to(fp8_dtype), scale


def store_linear_weights(module: torch.nn.Module, fp8_dtype: torch.dtype) -> None:
    """Keep every nn.Linear weight of ``module`` in ``fp8_dtype``: scaled where the layer can apply a
    scale (built with ``scaled_operations``), else by a plain cast. Biases stay in their dtype."""
    for layer in module.modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        if hasattr(layer, "scale_weight"):
            q, scale = quantize(layer.weight, fp8_dtype)
            layer.weight = torch.nn.Parameter(q, requires_grad=False)
            layer.scale_weight = torch.nn.Parameter(scale, requires_grad=False)
        else:
            _warn_unscaled()
            layer.weight = torch.nn.Parameter(layer.weight.detach().to(fp8_dtype), requires_grad=False)


@functools.cache
def _warn_unscaled() -> None:
    logging.warning(
        "Lance: this ComfyUI has no scaled fp8 layers (comfy.ops.scaled_fp8_ops), so fp8 weights are stored "
        "by a plain cast: weights below 2^-9 become 0 and those below 2^-6 keep 1-2 bits, which costs "
        "visible quality. Use weight_dtype 'default' for full quality.")
