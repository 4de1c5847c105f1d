"""The pack's own socket types; everything else (IMAGE, LATENT, VAE, STRING) is ComfyUI's."""
from __future__ import annotations

from comfy_api.latest import io

# A loaded checkpoint: config, tokenizer and one ModelPatcher per part (see model_handle.LanceModel).
LanceModelSocket = io.Custom("LANCE_MODEL")
# An encoded prompt: the prefix KV caches of both guidance branches (lance_model.generation.GenerationCondition).
LanceCondSocket = io.Custom("LANCE_COND")
