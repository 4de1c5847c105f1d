"""Expected tensor names and shapes of every checkpoint file, derived from the module trees.

One definition serves the ``keys`` command (full-size inventories, compared with the spec's
``lance-keys-*.tsv``), checkpoint validation and the tiny-checkpoint generator, so a key can
never be valid in one place and missing in another. Modules are built on the meta device:
no memory is allocated even at full size.
"""
from __future__ import annotations

import torch

from .config import LATENT, LANCE_3B_LLM, QWEN25_VL_3B_VISION, LLMConfig, VisionConfig
from .mot import build_experts, pos_table_rows
from .vit import CHECKPOINT_PREFIX, build_vision_tower

Shapes = dict[str, tuple[int, ...]]

VARIANTS = ("image", "video")
POS_TABLE_KEY = "latent_pos_embed.pos_embed"
# The released Lance_3B stores a single-frame table (4096 rows); Lance_3B_Video one for the
# reference's max_num_frames. Either way the loader drops it: the table is recomputed.
STORED_POS_TABLE_FRAMES = {"image": 1, "video": LATENT.max_num_frames}


def module_shapes(module: torch.nn.Module, prefix: str = "") -> Shapes:
    return {prefix + name: tuple(t.shape) for name, t in module.state_dict().items()}


def expert_shapes(cfg: LLMConfig) -> tuple[Shapes, Shapes]:
    """(understanding, generation) tensors of a Lance LLM with this configuration."""
    und, gen = build_experts(cfg, device="meta")
    return module_shapes(und), module_shapes(gen)


def vision_shapes(cfg: VisionConfig, prefix: str = "") -> Shapes:
    return module_shapes(build_vision_tower(cfg, device="meta"), prefix)


def pos_table_shape(cfg: LLMConfig, max_num_frames: int) -> tuple[int, int]:
    return pos_table_rows(max_num_frames=max_num_frames), cfg.hidden_size


def official_shapes(variant: str) -> Shapes:
    """Tensors of the released ``Lance_3B`` ('image'), ``Lance_3B_Video`` ('video'),
    ``Qwen2.5-VL-ViT/vit.safetensors`` ('vit') or ``Wan2.2_VAE.pth`` ('vae', needs ComfyUI)."""
    if variant == "vit":
        return vision_shapes(QWEN25_VL_3B_VISION)
    if variant == "vae":
        from .vae import build_wan22_vae

        return module_shapes(build_wan22_vae())
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of image, video, vit, vae")
    und, gen = expert_shapes(LANCE_3B_LLM)
    shapes = {**und, **gen, POS_TABLE_KEY: pos_table_shape(LANCE_3B_LLM, STORED_POS_TABLE_FRAMES[variant])}
    if variant == "video":
        shapes.update(vision_shapes(QWEN25_VL_3B_VISION, CHECKPOINT_PREFIX))
    return shapes


def format_shape(shape) -> str:
    """``[151936, 2048]``, the notation of the spec's key tables."""
    return str(list(shape))
