"""VAE encoding of a condition (i2v's first frame, an edit's source) through the native VAE object."""
from __future__ import annotations

import torch

from ..lance_model.pipeline import DEFAULT_SEED
from ..lance_model.vae import encode_condition

# The reference samples the VAE posterior of a condition. The draw is fixed here (a CPU generator with the
# command line's default seed, so `python -m lance_model run` at that seed draws the same) rather than tied
# to the sampler's seed: the encoder nodes then stay cached when only the seed changes.
POSTERIOR_SEED = DEFAULT_SEED


def encode_clean_latent(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Lance's normalised latent ``[t, h, w, 48]`` of ``pixels`` [3, T, H, W] in [-1, 1], posterior-sampled
    and computed in bf16 like the reference, whatever dtype ComfyUI keeps the VAE in. ``vae`` is ComfyUI's
    VAE (its memory manager places the model)."""
    generator = torch.Generator("cpu").manual_seed(POSTERIOR_SEED)
    return encode_condition(vae, pixels, generator=generator, compute_dtype=torch.bfloat16).latent
