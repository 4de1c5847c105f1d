"""The full model set with random weights, built on the meta device and materialised on the target."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lance_model.config import LANCE_3B_LLM, QWEN25_VL_3B_VISION, LLMConfig, VisionConfig
from lance_model.mot import MoTDecoder, build_experts
from lance_model.prompts import IM_END
from lance_model.tiny import TINY_LLM_DIMS, TINY_VAE_DEC_DIM, TINY_VAE_DIM, TINY_VISION
from lance_model.tokenizer import LanceTokenizer
from lance_model.vae import WAN22_DEC_DIM, WAN22_DIM, build_wan22_vae
from lance_model.vit import VisionTower, build_vision_tower

from clock import Clock
from random_weights import materialize_random_


@dataclass(frozen=True)
class ModelSizes:
    llm: LLMConfig
    vision: VisionConfig
    vae_dims: tuple[int, int]


FULL = ModelSizes(LANCE_3B_LLM, QWEN25_VL_3B_VISION, (WAN22_DIM, WAN22_DEC_DIM))
# Real vocabulary and special-token ids (the real tokenizer is used), tiny widths and depths.
TINY = ModelSizes(dataclasses.replace(LANCE_3B_LLM, **TINY_LLM_DIMS), TINY_VISION, (TINY_VAE_DIM, TINY_VAE_DEC_DIM))


@dataclass
class Models:
    decoder: MoTDecoder
    vit: VisionTower
    vae: nn.Module | None
    tokenizer: LanceTokenizer
    device: torch.device
    load_s: float        # meta build + random materialisation on the device (no file is read)


def build_models(sizes: ModelSizes, tokenizer: LanceTokenizer, device: torch.device, with_vae: bool,
                 seed: int = 0) -> Models:
    clock = Clock(device)
    start = clock.now()
    cfg = sizes.llm
    und, gen = build_experts(cfg, device="meta", dtype=torch.bfloat16)
    for offset, expert in enumerate((und, gen)):
        materialize_random_(expert, device, seed + offset, residual_layers=cfg.num_hidden_layers)
    vit = build_vision_tower(sizes.vision, device="meta", dtype=torch.bfloat16)
    materialize_random_(vit, device, seed + 2, residual_layers=sizes.vision.depth)
    vae = None
    if with_vae:
        vae = build_wan22_vae(*sizes.vae_dims, device="meta").to(torch.bfloat16)
        materialize_random_(vae, device, seed + 3)
    never_stop(und, tokenizer)
    load_s = clock.now() - start
    return Models(MoTDecoder(und, gen), vit, vae, tokenizer, device, load_s)


@torch.no_grad()
def never_stop(und, tokenizer: LanceTokenizer) -> None:
    """A zero LM-head row gives the stop token logit 0, below the maximum of ~150k random logits, so
    greedy decoding of random weights always runs the full token budget."""
    und.lm_head.weight[tokenizer.token_id(IM_END)] = 0
