"""Qwen2.5-VL vision tower (the understanding encoder of Lance), key-compatible with
``Qwen2.5-VL-ViT/vit.safetensors`` (bare names) and the video checkpoint's ``vit_model.*``.

Input: patches from ``preprocess.patchify_with_merge`` (each 2x2 merge group contiguous) and one
``(t, h, w)`` patch grid per image/clip. Output: one token per merge group, in that same order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention_backends import AttentionBackend, attention_backend
from .config import VisionConfig
from .layers import RMSNorm, SwiGLU
from .ops import TorchOps
from .varlen_attention import PackedSegments, varlen_attention

CHECKPOINT_PREFIX = "vit_model."
ROPE_THETA = 10000.0

Grid = tuple[int, int, int]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.in_channels = cfg.in_channels
        self.proj = ops.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=self.kernel, stride=self.kernel,
                               bias=False, device=device, dtype=dtype)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # kernel == stride == one patch, so the convolution is a linear map of each patch
        return self.proj(patches.reshape(-1, self.in_channels, *self.kernel)).flatten(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [tokens, heads, head_dim] in fp32 (cos/sin [tokens, 1, head_dim]); result in x's dtype."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = ops.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, device=device, dtype=dtype)
        self.proj = ops.Linear(cfg.hidden_size, cfg.hidden_size, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], segments: PackedSegments,
                backend: AttentionBackend):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)
        cos, sin = rope
        out = varlen_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, segments, backend)
        return self.proj(out.reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.attn = VisionAttention(cfg, ops=ops, device=device, dtype=dtype)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=True, ops=ops, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], segments: PackedSegments,
                backend: AttentionBackend):
        x = x + self.attn(self.norm1(x), rope, segments, backend)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = nn.Sequential(
            ops.Linear(self.merged, self.merged, bias=True, device=device, dtype=dtype),
            nn.GELU(),
            ops.Linear(self.merged, cfg.out_hidden_size, bias=True, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.merged))


def window_order(grids: Sequence[Grid], cfg: VisionConfig) -> tuple[torch.Tensor, list[int]]:
    """Permutation of merge groups into window order and the window lengths in patches.

    Windows are ``window_size`` pixels square (4x4 merge groups for the released model), laid out
    from the top-left of each temporal slice; edge windows are clipped, so lengths vary.
    """
    merge = cfg.spatial_merge_size
    side = cfg.window_size // merge // cfg.patch_size
    order, lengths, offset = [], [], 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        nh, nw = -(-gh // side), -(-gw // side)
        index = torch.arange(t * gh * gw).view(t, gh, gw)
        index = F.pad(index, (0, nw * side - gw, 0, nh * side - gh), value=-1)
        index = index.view(t, nh, side, nw, side).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
        counts = (index >= 0).sum(dim=1)
        order.append(index[index >= 0] + offset)
        lengths += [int(c) * merge * merge for c in counts if c > 0]
        offset += t * gh * gw
    return torch.cat(order), lengths


def _patch_rows_cols(grids: Sequence[Grid], merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch, in patchify order (merge group by merge group)."""
    rows, cols = [], []
    for t, h, w in grids:
        r = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        c = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (h-block, dy, w-block, dx) -> (h-block, w-block, dy, dx)
        rows.append(r.permute(0, 2, 1, 3).reshape(-1).repeat(t))
        cols.append(c.permute(0, 2, 1, 3).reshape(-1).repeat(t))
    return torch.cat(rows), torch.cat(cols)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.dtype = dtype or torch.get_default_dtype()
        self.patch_embed = PatchEmbed(cfg, ops=ops, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(VisionBlock(cfg, ops=ops, device=device, dtype=dtype) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, ops=ops, device=device, dtype=dtype)

    def rotary(self, grids: Sequence[Grid], device) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D RoPE (half the rotary pairs for the row, half for the column), in patchify order.

        The reference casts the whole model to bf16, so ``inv_freq`` is bf16-rounded and the
        angle table, cos and sin are computed in the model dtype before going to fp32.
        """
        half = self.config.head_dim // 2
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)
        inv_freq = inv_freq.to(torch.bfloat16).to(self.dtype)
        longest = max(max(h, w) for _, h, w in grids)
        table = torch.outer(torch.arange(longest, dtype=self.dtype, device=device), inv_freq)
        rows, cols = _patch_rows_cols(grids, self.config.spatial_merge_size)
        angles = torch.cat((table[rows.to(device)], table[cols.to(device)]), dim=-1)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().float().unsqueeze(1), angles.sin().float().unsqueeze(1)

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor | Sequence[Sequence[int]],
                attention: str = "auto") -> torch.Tensor:
        """``patches`` [N, C*tp*p*p] (any float dtype, CLIP-normalised) for the images/clips of
        ``grid_thw`` (one (t, h, w) patch grid per item, packed in order) -> [N / merge², out_hidden].
        ``attention`` names the kernel (``attention_backends``)."""
        grids = self._check_grids(patches, grid_thw)
        cfg, device = self.config, patches.device
        backend = attention_backend(attention, device)
        unit = cfg.spatial_merge_size ** 2
        order, window_lengths = window_order(grids, cfg)
        order = order.to(device)
        x = self.patch_embed(patches.to(self.dtype))
        x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
        cos, sin = self.rotary(grids, device)
        rope = tuple(r.view(-1, unit, *r.shape[1:])[order].flatten(0, 1) for r in (cos, sin))
        windows = PackedSegments(window_lengths, device)
        # full-attention blocks still see one temporal slice at a time
        slices = PackedSegments([h * w for t, h, w in grids for _ in range(t)], device)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, slices if i in cfg.fullatt_block_indexes else windows, backend)
        x = self.merger(x)
        restore = torch.empty_like(order)
        restore[order] = torch.arange(order.numel(), device=device)
        return x[restore]

    def _check_grids(self, patches: torch.Tensor, grid_thw) -> list[Grid]:
        cfg = self.config
        grids = [tuple(int(v) for v in g) for g in (grid_thw.tolist() if torch.is_tensor(grid_thw) else grid_thw)]
        if not grids or any(len(g) != 3 or min(g) < 1 for g in grids):
            raise ValueError(f"grid_thw must list positive (t, h, w) patch grids, got {grids}")
        merge = cfg.spatial_merge_size
        bad = [g for g in grids if g[1] % merge or g[2] % merge]
        if bad:
            raise ValueError(f"patch grids {bad} are not divisible by the merge size {merge}; crop images to "
                             f"multiples of {merge * cfg.patch_size} px (preprocess does this)")
        expected = sum(t * h * w for t, h, w in grids)
        if patches.dim() != 2 or patches.shape != (expected, cfg.patch_dim):
            raise ValueError(f"patches must be [{expected}, {cfg.patch_dim}] for grids {grids}, "
                             f"got {list(patches.shape)}")
        return grids


def build_vision_tower(cfg: VisionConfig, ops=TorchOps, device="meta", dtype=torch.bfloat16) -> VisionTower:
    return VisionTower(cfg, ops=ops, device=device, dtype=dtype)
