"""Qwen2.5-VL vision tower (the understanding encoder of Lance), key-compatible with
``Qwen2.5-VL-ViT/vit.safetensors`` (bare names) and the video checkpoint's ``vit_model.*``."""
from __future__ import annotations

import torch
from torch import nn

from .config import VisionConfig
from .layers import RMSNorm, SwiGLU
from .ops import TorchOps

CHECKPOINT_PREFIX = "vit_model."


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = ops.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=kernel, stride=kernel, bias=False,
                               device=device, dtype=dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = ops.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, device=device, dtype=dtype)
        self.proj = ops.Linear(cfg.hidden_size, cfg.hidden_size, bias=True, device=device, dtype=dtype)


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.attn = VisionAttention(cfg, ops=ops, device=device, dtype=dtype)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=True, ops=ops, device=device, dtype=dtype)


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        merged = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = nn.Sequential(
            ops.Linear(merged, merged, bias=True, device=device, dtype=dtype),
            nn.GELU(),
            ops.Linear(merged, cfg.out_hidden_size, bias=True, device=device, dtype=dtype),
        )


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg, ops=ops, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(VisionBlock(cfg, ops=ops, device=device, dtype=dtype) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, ops=ops, device=device, dtype=dtype)


def build_vision_tower(cfg: VisionConfig, ops=TorchOps, device="meta", dtype=torch.bfloat16) -> VisionTower:
    return VisionTower(cfg, ops=ops, device=device, dtype=dtype)
