"""Session fixture ``tiny_checkpoint``: one tiny random-weight model set in the official layout
(``Lance_3B/``, ``Lance_3B_Video/``, ``Qwen2.5-VL-ViT/``, ``Wan2.2_VAE.pth``), generated once per run.
Needs ComfyUI (``COMFYUI_PATH``) for the VAE's module tree."""
from __future__ import annotations

import pytest

from lance_model.tiny import TinyModels, write_tiny_checkpoint

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> TinyModels:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_models"), seed=TINY_SEED, vae_widths="tiny")
