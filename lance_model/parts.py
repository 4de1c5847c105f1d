"""Build the separately managed parts of Lance (und expert, gen expert, vision tower) from an opened
checkpoint. Modules are created on the meta device and take the memory-mapped tensors by
assignment, so nothing is allocated or copied unless a device or dtype change asks for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import LanceCheckpoint, VitCheckpoint, check_vit_fits
from .mot import GenerationExpert, UnderstandingExpert, build_experts
from .ops import TorchOps
from .vit import VisionTower, build_vision_tower


@dataclass
class LanceParts:
    und: UnderstandingExpert
    gen: GenerationExpert
    vit: VisionTower | None
    vit_source: str | None  # the file the vision-tower weights came from


def _load(module: nn.Module, state_dict: dict[str, torch.Tensor], device, dtype) -> nn.Module:
    # .to() returns the tensor itself when nothing changes, keeping the mmap view (no copy).
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def build_parts(ckpt: LanceCheckpoint, vit_dir: str | Path | None = None, ops=TorchOps, device="cpu",
                dtype=torch.bfloat16) -> LanceParts:
    """Instantiate und / gen experts and the vision tower of ``ckpt``.

    Which vision-tower weights are used (spec §9.1): the reference first loads
    ``Qwen2.5-VL-ViT/vit.safetensors`` and then loads ``model.safetensors`` non-strictly, so for
    the video checkpoint its bundled ``vit_model.*`` tensors overwrite the separate ViT. The golden
    fixtures were produced that way, hence the bundled ViT wins here too and ``vit_dir`` is ignored
    for a video checkpoint. The image checkpoint bundles no ViT: its tower comes from ``vit_dir``
    (the ``Qwen2.5-VL-ViT`` folder), and is ``None`` when no ``vit_dir`` is given.
    """
    und, gen = build_experts(ckpt.llm_config, ops=ops, device="meta", dtype=dtype)
    _load(und, ckpt.und, device, dtype)
    _load(gen, ckpt.gen, device, dtype)
    if ckpt.vit is not None:
        vision_cfg, vit_weights = ckpt.vision_config, ckpt.vit
        vit_source = f"{ckpt.weights_file} (vit_model.*)"
    elif vit_dir is not None:
        separate = VitCheckpoint.open(vit_dir)
        check_vit_fits(separate.config, ckpt.llm_config, str(separate.config_file), str(ckpt.config_file))
        vision_cfg, vit_weights = separate.config, separate.state_dict
        vit_source = str(separate.weights_file)
    else:
        return LanceParts(und=und, gen=gen, vit=None, vit_source=None)
    vit = build_vision_tower(vision_cfg, ops=ops, device="meta", dtype=dtype)
    return LanceParts(und=und, gen=gen, vit=_load(vit, vit_weights, device, dtype), vit_source=vit_source)
