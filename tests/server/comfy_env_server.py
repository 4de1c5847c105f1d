"""Start and stop a ComfyUI for the server tests through scripts/comfy_env.sh (the same path as the main
job): on a free loopback port, with its own input/output/user/temp folders under ``root/instance`` and
``lance`` and ``vae`` model folders under ``root/models`` that tests may fill while it runs.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from comfy_client import ComfyClient

ENV_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "comfy_env.sh"
INSTANCE_FOLDER = "instance"
MODEL_FOLDER_KEYS = ("lance", "vae")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENV_SCRIPT), command], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


@contextmanager
def comfy_env_server(root: Path, extra_paths: dict[str, Path] | None = None,
                     extra_args: str | None = None) -> Iterator[ComfyClient]:
    """Run a ComfyUI whose ``lance`` and ``vae`` model folders are ``root/models/...`` (created empty), plus
    the extra_model_paths.yaml entries ``extra_paths`` (e.g. ``custom_nodes``); ``extra_args`` replaces
    the caller's COMFY_EXTRA_ARGS. Stops it on exit."""
    models_dir = root / "models"
    folders = {key: models_dir / key for key in MODEL_FOLDER_KEYS}
    for folder in folders.values():
        folder.mkdir(parents=True)
    model_paths = root / "extra_model_paths.yaml"
    paths = folders | (extra_paths or {})
    model_paths.write_text(yaml.safe_dump({"lance_tests": {key: str(path) for key, path in paths.items()}}))
    env = dict(os.environ, COMFY_PORT=str(_free_port()), COMFY_INSTANCE_DIR=str(root / INSTANCE_FOLDER),
               COMFY_EXTRA_MODEL_PATHS=str(model_paths))
    if extra_args is not None:
        env["COMFY_EXTRA_ARGS"] = extra_args
    if env.get("COMFYUI_PATH"):
        env.setdefault("COMFY_PYTHON", sys.executable)

    started = _env_script("start", env)
    if started.returncode != 0:
        raise RuntimeError(f"ComfyUI did not start (comfy_env.sh start exit {started.returncode}):\n{started.stderr}")
    try:
        listed = _env_script("env", env)
        assert listed.returncode == 0, f"comfy_env.sh env failed:\n{listed.stderr}"
        settings = dict(shlex.split(line)[0].split("=", 1) for line in listed.stdout.splitlines())
        yield ComfyClient(url=settings["COMFY_URL"], log_path=Path(settings["COMFY_LOG"]),
                          pack_name=settings["COMFY_PACK_NAME"], models_dir=models_dir)
    finally:
        stopped = _env_script("stop", env)
        assert stopped.returncode == 0, f"comfy_env.sh stop failed:\n{stopped.stderr}"
