"""Lance's normalisation of Wan 2.2 latents, and conversion to ComfyUI's LATENT convention.

Lance feeds the LLM ``(mu - mean) * (1/std)`` per channel. The reference keeps the 48 constants in
bf16 (its VAE wrapper builds them with the model dtype), computes ``1/std`` in bf16 and does the
arithmetic in bf16; every function here does the same, whatever dtype the VAE itself runs in, so the
latents match the ones the model was trained and evaluated on.

ComfyUI's LATENT for Wan 2.2 holds VAE-native (un-normalised) values, ``{"samples": [B,48,t,h,w]}``;
Lance works per element with channels last, ``[t,h,w,48]``.
"""
from __future__ import annotations

import torch

from .config import LATENT

# Per-channel statistics of the Wan 2.2 VAE latent (spec §2.7; the same literals as ComfyUI's
# ``comfy.latent_formats.Wan22``).
LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
_STATS_DTYPE = torch.bfloat16


def _stats(channel_dim: int, ndim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``1/std`` in bf16, shaped to broadcast along ``channel_dim``."""
    shape = [1] * ndim
    shape[channel_dim] = LATENT.channels
    mean = torch.tensor(LATENT_MEAN, dtype=_STATS_DTYPE, device=device).view(shape)
    inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=_STATS_DTYPE, device=device).view(shape)
    return mean, inv_std


def normalize_latent(native: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """VAE-native latent -> Lance's normalised latent (bf16)."""
    mean, inv_std = _stats(channel_dim, native.dim(), native.device)
    return (native.to(_STATS_DTYPE) - mean) * inv_std


def denormalize_latent(latent: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Lance's normalised latent -> VAE-native latent (bf16)."""
    mean, inv_std = _stats(channel_dim, latent.dim(), latent.device)
    return latent.to(_STATS_DTYPE) / inv_std + mean


def _require_layout(tensor: torch.Tensor, channel_dim: int, layout: str, what: str) -> None:
    if tensor.dim() not in (4, 5) or tensor.shape[channel_dim] != LATENT.channels:
        raise ValueError(f"{what} must be {layout} with {LATENT.channels} channels (a leading batch "
                         f"dimension is optional), got shape {list(tensor.shape)}")


def lance_latent_to_comfy(latent: torch.Tensor) -> torch.Tensor:
    """Lance latent ``[t,h,w,48]`` or ``[B,t,h,w,48]`` -> ComfyUI LATENT samples ``[B,48,t,h,w]``.

    The values are VAE-native, computed in bf16 as the reference does before decoding, and returned
    as fp32 (ComfyUI's LATENT dtype) so that a bf16 VAE sees exactly the reference's input.
    """
    _require_layout(latent, -1, "channels-last [t,h,w,48]", "a Lance latent")
    batched = latent if latent.dim() == 5 else latent.unsqueeze(0)
    return denormalize_latent(batched.movedim(-1, 1), channel_dim=1).float()


def comfy_latent_to_lance(samples: torch.Tensor) -> torch.Tensor:
    """ComfyUI LATENT samples ``[B,48,t,h,w]`` (or ``[48,t,h,w]``) -> Lance latents ``[B,t,h,w,48]``
    (or ``[t,h,w,48]``), normalised, in bf16 (the dtype the Lance sampler keeps latents in)."""
    _require_layout(samples, -4, "channels-first [48,t,h,w]", "ComfyUI LATENT samples")
    return normalize_latent(samples, channel_dim=-4).movedim(-4, -1)
