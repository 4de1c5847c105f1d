"""A real ComfyUI server for the server tests, shared by the whole session.

It is started by ``comfy_env_server`` with a models folder that tests may fill while it runs:
``comfy_server.models_dir`` is laid out like ComfyUI's models/, its ``lance/`` and ``vae/`` being
the server's ``lance`` and ``vae`` model folders (``served_tiny_models`` fills them). It sends
Latent2RGB previews of every sampler step.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_client import ComfyClient
from comfy_env_server import comfy_env_server
from fixtures_tiny import TINY_SEED

from lance_model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> Iterator[ComfyClient]:
    # ComfyUI 0.3.75 sends latent previews only when started with a preview method (a prompt cannot ask).
    extra_args = f"{os.environ.get('COMFY_EXTRA_ARGS', '')} --preview-method latent2rgb".strip()
    with comfy_env_server(tmp_path_factory.mktemp("comfy_server"), extra_args=extra_args) as server:
        yield server


@pytest.fixture(scope="session")
def served_tiny_models(comfy_server, tmp_path_factory) -> Path:
    """A tiny model set linked into the running server's models folder: lance/Lance_3B/,
    lance/Lance_3B_Video/, lance/Qwen2.5-VL-ViT/ and vae/Wan2.2_VAE.pth. Returns that models folder.

    Unlike the library tests' ``tiny_checkpoint`` (same seed), its VAE has the official widths:
    ComfyUI's VAELoader builds the Wan 2.2 VAE at those widths and rejects narrower weights."""
    served = write_tiny_checkpoint(tmp_path_factory.mktemp("served_tiny_models"), seed=TINY_SEED,
                                   vae_widths="official")
    lance_dir = comfy_server.models_dir / "lance"
    for folder in (served.image, served.video, served.vit):
        (lance_dir / folder.name).symlink_to(folder, target_is_directory=True)
    (comfy_server.models_dir / "vae" / served.vae.name).symlink_to(served.vae)
    return comfy_server.models_dir
