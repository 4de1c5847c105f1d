"""Initial noise of the generation sampler, as token-major rows ``[t·h·w, C]`` (bf16).

Two conventions:

* ``comfy_noise`` (default): what ComfyUI's ``prepare_noise`` draws for a LATENT ``[B, C, t, h, w]``
  (fp32, CPU generator seeded with ``seed``), so a seed gives the same picture on every device.
* ``reference_noise``: the official sampler's draw, ``randn(N_vae, C)`` in bf16 from a generator on
  the sampling device. ``N_vae`` counts every VAE token of the sample (an edit's source rows come
  first), and the target block takes the last rows. CUDA generators reproduce the official GPU
  runs; a CPU generator reproduces the CPU golden fixtures.
"""
from __future__ import annotations

import torch


def comfy_noise(latent_shape, seed: int) -> torch.Tensor:
    """Noise for a LATENT of shape ``[B, C, t, h, w]`` → ``[B, t·h·w, C]`` bf16 rows (on the CPU)."""
    if len(latent_shape) != 5:
        raise ValueError(f"expected a video latent shape [B, C, t, h, w], got {list(latent_shape)}")
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(tuple(latent_shape), generator=generator, dtype=torch.float32)
    return latent_to_rows(noise).to(torch.bfloat16)


def reference_noise(num_vae_tokens: int, num_target_tokens: int, seed: int, channels: int = 48,
                    device="cuda") -> torch.Tensor:
    """The official draw's target rows ``[num_target_tokens, channels]`` (bf16, on ``device``)."""
    if not 0 < num_target_tokens <= num_vae_tokens:
        raise ValueError(f"target tokens ({num_target_tokens}) must be between 1 and the sample's VAE "
                         f"tokens ({num_vae_tokens})")
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(num_vae_tokens, channels, generator=generator, dtype=torch.bfloat16, device=device)
    return noise[num_vae_tokens - num_target_tokens:]


def latent_to_rows(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, t, h, w]`` → token-major ``[B, t·h·w, C]`` (τ-major, then i, then j)."""
    return latent.flatten(2).transpose(1, 2).contiguous()


def rows_to_latent(rows: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``latent_to_rows``."""
    return rows.transpose(1, 2).unflatten(2, (t, h, w))
