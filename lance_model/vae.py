"""The Wan 2.2 VAE, taken from ComfyUI (``comfy.ldm.wan.vae2_2``) rather than re-implemented, and the
two operations Lance needs from it: encoding a condition (image / video) into a normalised posterior,
and decoding a generated latent to uint8 frames, both with the reference's numerics (spec §2.7, §8.12).

Every function accepts either ComfyUI's ``comfy.sd.VAE`` (what the native "Load VAE" node returns; its
memory manager places the model) or a bare ``WanVAE`` module (tests, command line).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .comfy_lookup import import_comfy_module
from .config import LATENT
from .vae_latent import lance_latent_to_comfy, normalize_latent
from .vae_precision import ReferencePrecision

# Geometry of the released Wan2.2_VAE.pth; the tiny test checkpoints only change the widths.
WAN22_ARCH = dict(z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True])
WAN22_DIM = 160
WAN22_DEC_DIM = 256
WAN22_FILES = "Wan2.2_VAE.pth or wan2.2_vae.safetensors"
# The encoder works on 2x2 pixel patches, then halves the resolution three times.
_PIXELS_PER_LATENT = LATENT.spatial_factor


class WrongVAEError(ValueError):
    """The VAE given to Lance is not the 48-channel Wan 2.2 VAE."""


def build_wan22_vae(dim: int = WAN22_DIM, dec_dim: int = WAN22_DEC_DIM, device="meta") -> torch.nn.Module:
    """ComfyUI's Wan 2.2 ``WanVAE`` module (no weights loaded)."""
    vae2_2 = import_comfy_module("comfy.ldm.wan.vae2_2")
    with torch.device(device):
        return vae2_2.WanVAE(dim=dim, dec_dim=dec_dim, **WAN22_ARCH)


def wan22_widths(state_dict: dict) -> tuple[int, int]:
    """``(dim, dec_dim)`` of a Wan 2.2 VAE state dict (160, 256 for the released file)."""
    return state_dict["encoder.conv1.weight"].shape[0], state_dict["decoder.head.0.gamma"].shape[0]


def load_wan22_vae(state_dict: dict, device="cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A ``WanVAE`` holding ``state_dict`` (keys as in ``Wan2.2_VAE.pth``), on ``device`` in ``dtype``."""
    channels = state_dict["conv2.weight"].shape[0] if "conv2.weight" in state_dict else None
    if channels != LATENT.channels:
        raise WrongVAEError(f"this VAE state dict has {channels or 'no recognisable'} latent channels"
                            f"{' (the Wan 2.1 VAE)' if channels == 16 else ''}; Lance needs the Wan 2.2 VAE "
                            f"({LATENT.channels} channels): load {WAN22_FILES}")
    module = build_wan22_vae(*wan22_widths(state_dict), device="meta")
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _describe(vae, module) -> str:
    if module is None:
        return "the VAE holds no model (ComfyUI did not recognise its file)"
    wan21 = import_comfy_module("comfy.ldm.wan.vae")
    channels = getattr(vae, "latent_channels", getattr(module, "z_dim", None)) or "an unknown number of"
    if isinstance(module, wan21.WanVAE):
        return f"got the Wan 2.1 VAE ({channels} latent channels)"
    return f"got a {type(module).__name__} model with {channels} latent channels, not the Wan 2.2 VAE"


def require_wan22_vae(vae) -> torch.nn.Module:
    """The ``WanVAE`` module inside ``vae`` (a ``comfy.sd.VAE`` or the module itself); raises
    ``WrongVAEError`` naming the file to load for a Wan 2.1 VAE or anything else."""
    module = getattr(vae, "first_stage_model", vae)
    vae2_2 = import_comfy_module("comfy.ldm.wan.vae2_2")
    if isinstance(module, vae2_2.WanVAE) and module.z_dim == LATENT.channels:
        return module
    raise WrongVAEError(f"{_describe(vae, module)}; Lance needs the Wan 2.2 VAE ({LATENT.channels} latent "
                        f"channels): load {WAN22_FILES} with ComfyUI's Load VAE node")


def _placed_module(vae, work_shape: torch.Size, decoding: bool):
    """The WanVAE ready to run, with the device and dtype it computes in."""
    module = require_wan22_vae(vae)
    if module is vae:
        weight = next(module.parameters())
        return module, weight.device, weight.dtype
    memory_management = import_comfy_module("comfy.model_management")
    estimate = vae.memory_used_decode if decoding else vae.memory_used_encode
    memory_management.load_models_gpu([vae.patcher], memory_required=estimate(work_shape, vae.vae_dtype),
                                      force_full_load=vae.disable_offload)
    return module, vae.device, vae.vae_dtype


def _posterior_moments(module: torch.nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, logvar)`` of ``video`` [1,3,T,H,W]; ComfyUI's ``WanVAE.encode`` drops ``logvar``."""
    vae2_2 = import_comfy_module("comfy.ldm.wan.vae2_2")
    patches = vae2_2.patchify(video, patch_size=2)
    # As in the reference, frame 0 goes through the causal encoder alone and later frames in groups of
    # the temporal factor, all sharing one feature cache; the split decides which frames mix.
    step = LATENT.temporal_factor
    chunks = [patches[:, :, :1]] + [patches[:, :, i:i + step] for i in range(1, patches.shape[2], step)]
    cache = [None] * vae2_2.count_conv3d(module.encoder)
    features = torch.cat([module.encoder(chunk, feat_cache=cache, feat_idx=[0]) for chunk in chunks], dim=2)
    mu, logvar = module.conv1(features).chunk(2, dim=1)
    return mu, logvar


@dataclass(frozen=True)
class EncodedCondition:
    """One encoded condition element, each ``[t,h,w,48]`` fp32."""

    mean: torch.Tensor    # normalised posterior mean (bf16 values, as the reference computes it)
    logvar: torch.Tensor  # raw (not normalised) posterior log-variance
    latent: torch.Tensor  # mean + exp(0.5*logvar)*eps, or the mean itself when nothing was sampled


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.dim() != 4 or pixels.shape[0] != 3:
        raise ValueError(f"pixels must be [3,T,H,W] in [-1,1], got shape {list(pixels.shape)}")
    frames, height, width = pixels.shape[1:]
    if (frames - 1) % LATENT.temporal_factor:
        raise ValueError(f"the Wan 2.2 VAE encodes 4k+1 frames (1, 5, 9, ...), got {frames}; "
                         "trim the clip, the encoder would silently drop the extra frames")
    if height % _PIXELS_PER_LATENT or width % _PIXELS_PER_LATENT:
        raise ValueError(f"pixel height and width must be multiples of {_PIXELS_PER_LATENT}, got {height}x{width}")


def _posterior_noise(eps, generator, shape: torch.Size, device) -> torch.Tensor | None:
    if eps is not None and generator is not None:
        raise ValueError("give either eps or generator for the posterior noise, not both")
    if eps is not None:
        if tuple(eps.shape) != tuple(shape):
            raise ValueError(f"eps must be channels-first {list(shape)} (as the reference draws it), "
                             f"got {list(eps.shape)}")
        return eps.to(device=device, dtype=torch.float32)
    if generator is not None:
        # The reference draws randn_like of the [1,48,t,h,w] log-variance: same element order.
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    return None


@torch.no_grad()
def encode_condition(vae, pixels: torch.Tensor, *, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None,
                     compute_dtype: torch.dtype | None = None) -> EncodedCondition:
    """Encode ``pixels`` [3,T,H,W] in [-1,1] (T = 4k+1, H and W multiples of 16) like the reference.

    With ``eps`` ([48,t,h,w] fp32) or a ``generator`` the posterior is sampled,
    ``latent = mean + exp(0.5*logvar)*eps``; otherwise ``latent`` is the mean. ``compute_dtype``
    defaults to the VAE's own dtype; bf16 reproduces the reference (convolutions bf16, norms fp32).
    Results come back on the device of ``pixels``.
    """
    _check_pixels(pixels)
    video = pixels.unsqueeze(0)
    module, device, dtype = _placed_module(vae, video.shape, decoding=False)
    with ReferencePrecision(compute_dtype or dtype):
        mu, logvar = _posterior_moments(module, video.to(device=device, dtype=torch.float32))
    mean = normalize_latent(mu[0], channel_dim=0).float()
    logvar = logvar[0].float()
    noise = _posterior_noise(eps, generator, mean.shape, mean.device)
    latent = mean if noise is None else noise * torch.exp(0.5 * logvar) + mean
    channels_last = (t.permute(1, 2, 3, 0).to(pixels.device) for t in (mean, logvar, latent))
    return EncodedCondition(*channels_last)


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoder output [3,F,H,W] -> uint8 frames [F,H,W,3], rounded as the reference saves them."""
    scaled = video.float().clamp(-1, 1).mul(0.5).add(0.5).mul(255)
    return scaled.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)


@torch.no_grad()
def decode_to_uint8(vae, latent: torch.Tensor, *, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode a normalised Lance latent [t,h,w,48] to uint8 frames [4(t-1)+1, 16h, 16w, 3].

    ``compute_dtype`` defaults to the VAE's own dtype; bf16 reproduces the reference. The frames come
    back on the device of ``latent``.
    """
    if latent.dim() != 4:
        raise ValueError(f"latent must be one element [t,h,w,{LATENT.channels}], got shape {list(latent.shape)}")
    native = lance_latent_to_comfy(latent)
    module, device, dtype = _placed_module(vae, native.shape, decoding=True)
    with ReferencePrecision(compute_dtype or dtype):
        video = module.decode(native.to(device))
    return frames_to_uint8(video[0]).to(latent.device)
