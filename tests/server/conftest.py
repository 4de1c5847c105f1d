"""A real ComfyUI server for the server tests, shared by the whole session.

It is started through scripts/comfy_env.sh (the same path as the main job) on a free loopback port,
with its own input/output/user/temp folders and a models folder that tests may fill while it runs:
``comfy_server.models_dir`` is laid out like ComfyUI's models/, its ``lance/`` and ``vae/`` being
the server's ``lance`` and ``vae`` model folders (``served_tiny_models`` fills them). It sends
Latent2RGB previews of every sampler step.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from comfy_client import ComfyClient
from fixtures_tiny import TINY_SEED

from lance_model.tiny import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO_ROOT / "scripts" / "comfy_env.sh"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENV_SCRIPT), command], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> Iterator[ComfyClient]:
    root = tmp_path_factory.mktemp("comfy_server")
    models_dir = root / "models"
    folders = {key: models_dir / key for key in ("lance", "vae")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    model_paths = root / "extra_model_paths.yaml"
    model_paths.write_text(yaml.safe_dump({"lance_tests": {key: str(path) for key, path in folders.items()}}))
    # ComfyUI 0.3.75 sends latent previews only when started with a preview method (a prompt cannot ask).
    extra_args = f"{os.environ.get('COMFY_EXTRA_ARGS', '')} --preview-method latent2rgb".strip()
    env = dict(os.environ, COMFY_PORT=str(_free_port()), COMFY_INSTANCE_DIR=str(root / "instance"),
               COMFY_EXTRA_MODEL_PATHS=str(model_paths), COMFY_EXTRA_ARGS=extra_args)
    if env.get("COMFYUI_PATH"):
        env.setdefault("COMFY_PYTHON", sys.executable)

    started = _env_script("start", env)
    if started.returncode != 0:
        pytest.fail(f"ComfyUI did not start (comfy_env.sh start exit {started.returncode}):\n{started.stderr}")
    try:
        listed = _env_script("env", env)
        assert listed.returncode == 0, f"comfy_env.sh env failed:\n{listed.stderr}"
        settings = dict(shlex.split(line)[0].split("=", 1) for line in listed.stdout.splitlines())
        yield ComfyClient(url=settings["COMFY_URL"], log_path=Path(settings["COMFY_LOG"]),
                          pack_name=settings["COMFY_PACK_NAME"], models_dir=models_dir)
    finally:
        stopped = _env_script("stop", env)
        assert stopped.returncode == 0, f"comfy_env.sh stop failed:\n{stopped.stderr}"


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
