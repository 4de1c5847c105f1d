"""Lance Empty Latent and Lance Image To Video Latent: shapes in ComfyUI's Wan 2.2 LATENT convention,
the i2v first frame and noise mask, and the widget checks (multiples of 16, 4k+1 frames)."""
from __future__ import annotations

import pytest
import torch
from pack_import import memory_requests, run_node, vae  # noqa: F401

from lance_model.comfy_lookup import import_comfy_module
from lance_model.preprocess import resolution_preset, vae_input
from lance_model.vae import encode_condition
from lance_model.vae_latent import lance_latent_to_comfy


@pytest.mark.parametrize("width, height, frames, shape", [
    (768, 768, 1, (1, 48, 1, 48, 48)),
    (848, 480, 49, (1, 48, 13, 30, 53)),
    (16, 1024, 121, (1, 48, 31, 64, 1)),
])
def test_empty_latent_is_zeros_of_the_wan22_latent_shape(width, height, frames, shape):
    samples = run_node("LanceEmptyLatent", width=width, height=height, frames=frames).args[0]["samples"]
    assert samples.shape == shape and samples.dtype == torch.float32
    assert samples.device == import_comfy_module("comfy.model_management").intermediate_device()
    assert not samples.any()


@pytest.mark.parametrize("inputs, message", [
    (dict(width=100, height=768, frames=1), "width must be a multiple of 16 between 16 and 1024 .* got 100; use 96"),
    (dict(width=768, height=1040, frames=1), "height must be a multiple of 16 .* got 1040; use 1024"),
    (dict(width=768, height=768, frames=6), r"frames must be 4k\+1 between 1 and 121 .* got 6; use 5"),
    (dict(width=768, height=768, frames=125), r"frames must be 4k\+1 .* got 125; use 121"),
])
def test_empty_latent_rejects_sizes_lance_cannot_make(inputs, message):
    with pytest.raises(ValueError, match=message):
        run_node("LanceEmptyLatent", **inputs)


@pytest.fixture(scope="module")
def start_image():
    generator = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (1, 90, 160, 3), generator=generator).float() / 255


def test_image_to_video_latent_keeps_the_encoded_image_as_frame_zero(vae, start_image, memory_requests):
    latent = run_node("LanceImageToVideoLatent", vae=vae, start_image=start_image, frames=9,
                      resolution="image_256res").args[0]
    assert memory_requests.calls == [[vae.patcher]]
    samples, mask = latent["samples"], latent["noise_mask"]
    # 16:9 bucket of image_256res: 192 x 336 px -> 12 x 21 latents; 9 frames -> 3 latent frames
    assert samples.shape == (1, 48, 3, 12, 21) and mask.shape == (1, 1, 3, 12, 21)
    assert not mask[:, :, 0].any() and bool((mask[:, :, 1:] == 1).all())
    assert not samples[:, :, 1:].any()

    pixels = vae_input(start_image, resolution_preset("image_256res").vae)
    expected = encode_condition(vae, pixels, generator=torch.Generator().manual_seed(42),
                                compute_dtype=torch.bfloat16).latent
    assert torch.equal(latent["lance_clean_frames"], expected)
    assert torch.equal(samples[:, :, :1], lance_latent_to_comfy(expected))


def test_image_to_video_needs_at_least_five_frames(vae, start_image):
    with pytest.raises(ValueError, match=r"frames must be 4k\+1 between 5 and 121 .* got 1; use 5"):
        run_node("LanceImageToVideoLatent", vae=vae, start_image=start_image, frames=1, resolution="image_256res")


def test_a_vae_that_is_not_wan22_is_refused_by_name(start_image):
    wan21 = import_comfy_module("comfy.ldm.wan.vae")
    module = wan21.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    vae = import_comfy_module("comfy.sd").VAE(sd=module.state_dict())
    with pytest.raises(ValueError, match=r"Wan 2\.1 VAE \(16 latent channels\).*Wan2\.2_VAE\.pth"):
        run_node("LanceImageToVideoLatent", vae=vae, start_image=start_image, frames=5, resolution="image_256res")
