"""LANCE_MODEL: an opened checkpoint as the nodes pass it around, and how the loader builds it.

The handle holds no tensors itself: the weights live in the modules of one ModelPatcher per part
(understanding expert, generation expert, vision tower), built on the offload device from the
memory-mapped checkpoint. Nodes ask ComfyUI's memory manager to place only the parts they run;
``.patcher`` and ``get_models()`` let ComfyUI's caches and trackers see those models.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..lance_model.checkpoint import VIT_FOLDER_NAME, LanceCheckpoint
from ..lance_model.config import LLMConfig
from ..lance_model.mot import MoTDecoder
from ..lance_model.parts import LanceParts, build_parts
from ..lance_model.tokenizer import LanceTokenizer
from . import comfy_runtime, fp8_storage

# The reference computes in bf16 (spec §8); the tiny-checkpoint parity depends on it.
COMPUTE_DTYPE = torch.bfloat16
# How the experts' matmul weights are stored; the options and their order follow ComfyUI's UNETLoader.
WEIGHT_DTYPES = {"default": COMPUTE_DTYPE, "fp8_e4m3fn": torch.float8_e4m3fn,
                 "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FP8_MATMUL_OPTIONS = {"fp8_e4m3fn_fast"}   # fp8 matrix multiplications where the GPU has them
UND, GEN, VIT = "und", "gen", "vit"


class MissingPartError(ValueError):
    pass


@dataclass(eq=False)
class LanceModel:
    name: str                  # the checkpoint folder's name
    variant: str               # 'image' (Lance_3B) or 'video' (Lance_3B_Video)
    config: LLMConfig
    tokenizer: LanceTokenizer
    parts: dict                # UND / GEN / VIT -> ModelPatcher (VIT absent when no tower was found)
    attention: str             # the resolved kernel name (attention_choice.resolve_attention)
    vit_source: str | None     # where the vision-tower weights came from

    @property
    def patcher(self):
        """The main model, for ComfyUI code that looks for one patcher per output."""
        return self.parts[UND]

    def get_models(self) -> list:
        return list(self.parts.values())

    @property
    def device(self) -> torch.device:
        return self.parts[UND].load_device

    def require_variant(self, variant: str, what: str) -> None:
        if self.variant != variant:
            wanted = "Lance_3B_Video" if variant == "video" else "Lance_3B"
            raise ValueError(f"{what} needs the {variant} model ({wanted}), but {self.name} is the {self.variant} "
                             f"model; load {wanted} in Lance Checkpoint Loader")

    def require_vision_tower(self, what: str) -> None:
        if VIT not in self.parts:
            raise MissingPartError(
                f"{what} needs the vision tower, which {self.name} does not bundle and which was not found: put "
                f"{VIT_FOLDER_NAME}/ (config.json + vit.safetensors) into models/lance, pick a folder in "
                f"vision_tower, or enable download_missing in Lance Checkpoint Loader")

    def activation_bytes(self, tokens: int) -> int:
        """Rough working memory of a pass over ``tokens`` tokens: hidden states, MLP activations and the
        two guidance branches' KV caches, in the compute dtype."""
        cfg = self.config
        kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
        per_token = 6 * cfg.hidden_size + 3 * cfg.intermediate_size + kv_per_token
        return tokens * per_token * COMPUTE_DTYPE.itemsize

    def load(self, *names: str, tokens: int = 0) -> None:
        """Have ComfyUI place the named parts (and only those) on the compute device."""
        comfy_runtime.load_models([self.parts[n] for n in names], memory_required=self.activation_bytes(tokens))

    def decoder(self, with_generation: bool) -> MoTDecoder:
        """The LLM over the placed experts, computing on the load device wherever ComfyUI left weights."""
        gen = self.parts[GEN].model if with_generation else None
        return MoTDecoder(self.parts[UND].model, gen, dtype=COMPUTE_DTYPE, und_device=self.device,
                          gen_device=self.device if with_generation else None, attention=self.attention)

    @property
    def vision_tower(self):
        return self.parts[VIT].model


def build_lance_model(folder: Path, vit_dir: Path | None, weight_dtype: str, attention: str,
                      prefer_separate_vit: bool) -> LanceModel:
    """Open ``folder`` and wrap its parts in patchers. Lazy: reads headers and maps the weight files; no
    weight is copied unless fp8 storage asks for it, and nothing moves to the GPU.

    ``prefer_separate_vit``: use the tower in ``vit_dir`` even when the checkpoint bundles one."""
    ckpt = LanceCheckpoint.open(folder)
    if prefer_separate_vit and vit_dir is not None:
        ckpt = dataclasses.replace(ckpt, vit=None)
    built = build_parts(ckpt, vit_dir, ops=part_operations(weight_dtype), device=comfy_runtime.offload_device(),
                        dtype=COMPUTE_DTYPE)
    return wrap_parts(built, name=folder.name, variant=ckpt.variant, config=ckpt.llm_config,
                      tokenizer=ckpt.tokenizer, weight_dtype=weight_dtype, attention=attention)


def part_operations(weight_dtype: str):
    """The ComfyUI layer classes to build the parts with, for weights kept in ``weight_dtype``."""
    return comfy_runtime.operations(WEIGHT_DTYPES[weight_dtype], COMPUTE_DTYPE,
                                    fp8_matmul=weight_dtype in FP8_MATMUL_OPTIONS)


def wrap_parts(built: LanceParts, *, name: str, variant: str, config: LLMConfig, tokenizer: LanceTokenizer,
               weight_dtype: str, attention: str) -> LanceModel:
    """The handle over parts built with ``part_operations(weight_dtype)`` on the offload device: the experts'
    matmul weights converted to their storage dtype (fp8 with a scale per tensor where the layers take one;
    norms, biases, embeddings and the vision tower stay bf16), one patcher per part."""
    storage = WEIGHT_DTYPES[weight_dtype]
    if storage != COMPUTE_DTYPE:
        for expert in (built.und, built.gen):
            fp8_storage.store_linear_weights(expert, storage)
    parts = {UND: comfy_runtime.make_patcher(built.und), GEN: comfy_runtime.make_patcher(built.gen)}
    if built.vit is not None:
        parts[VIT] = comfy_runtime.make_patcher(built.vit)
    return LanceModel(name=name, variant=variant, config=config, tokenizer=tokenizer, parts=parts,
                      attention=attention, vit_source=built.vit_source)
