"""The Wan 2.2 VAE, taken from ComfyUI (``comfy.ldm.wan.vae2_2``) rather than re-implemented."""
from __future__ import annotations

import torch

from .comfy_lookup import import_comfy_module

# Geometry of the released Wan2.2_VAE.pth; the tiny test checkpoints only change the widths.
WAN22_ARCH = dict(z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True])
WAN22_DIM = 160
WAN22_DEC_DIM = 256


def build_wan22_vae(dim: int = WAN22_DIM, dec_dim: int = WAN22_DEC_DIM, device="meta") -> torch.nn.Module:
    """ComfyUI's Wan 2.2 ``WanVAE`` module (no weights loaded)."""
    vae2_2 = import_comfy_module("comfy.ldm.wan.vae2_2")
    with torch.device(device):
        return vae2_2.WanVAE(dim=dim, dec_dim=dec_dim, **WAN22_ARCH)
