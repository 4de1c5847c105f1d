"""A private ComfyUI server for the reliability tests, and what they read from it.

Unlike the shared ``comfy_server`` it gets its own model folders (the tests put broken files there
without disturbing other tests' combo lists), can load test-only node packs (``reliability_pack``,
``narrow_vae_pack``) through an extra ``custom_nodes`` path, and exposes its process id, so the tests
can read its resident memory.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from comfy_client import ComfyClient

ENV_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "comfy_env.sh"
HERE = Path(__file__).resolve().parent
# Test-only node packs (see their docstrings).
RELIABILITY_PACK = HERE / "reliability_pack"
NARROW_VAE_PACK = HERE / "narrow_vae_pack"


@dataclass(frozen=True)
class ReliabilityServer(ComfyClient):
    """A ComfyClient that also knows its server's process."""

    pid: int = 0

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def settled_rss_kib(self) -> int:
        """Resident memory in use once the queue is idle: after the test pack's LanceTestReleaseFreeMemory
        has collected garbage and returned the allocator's free pages (needs RELIABILITY_PACK). The history
        is cleared first: ComfyUI keeps up to 10000 finished prompts there by design."""
        while self.get_json("/queue") != {"queue_running": [], "queue_pending": []}:
            time.sleep(0.1)
        request = urllib.request.Request(self.url + "/history", data=json.dumps({"clear": True}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).close()
        entry = self.wait_for_history(self.post_prompt(
            {"1": {"class_type": "LanceTestReleaseFreeMemory", "inputs": {}}}), timeout=60)
        assert entry["outputs"]["1"]["text"] == ["released"], entry["status"]
        return self.rss_kib()

    def is_alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENV_SCRIPT), command], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


@contextmanager
def reliability_server(root: Path, packs: tuple[Path, ...] = ()) -> Iterator[ReliabilityServer]:
    """Start a ComfyUI on a free port whose ``lance`` and ``vae`` model folders are ``root/models/...``
    (created empty), with the test-only node ``packs`` besides the Lance pack; stop it on exit."""
    models_dir = root / "models"
    folders = {key: models_dir / key for key in ("lance", "vae")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    paths = {key: str(path) for key, path in folders.items()}
    if packs:
        custom_nodes = root / "custom_nodes"
        custom_nodes.mkdir()
        for pack in packs:
            (custom_nodes / pack.name).symlink_to(pack, target_is_directory=True)
        paths["custom_nodes"] = str(custom_nodes)
    model_paths = root / "extra_model_paths.yaml"
    model_paths.write_text(yaml.safe_dump({"lance_reliability": paths}))
    env = dict(os.environ, COMFY_PORT=str(_free_port()), COMFY_INSTANCE_DIR=str(root / "instance"),
               COMFY_EXTRA_MODEL_PATHS=str(model_paths))
    if env.get("COMFYUI_PATH"):
        env.setdefault("COMFY_PYTHON", sys.executable)

    started = _env_script("start", env)
    if started.returncode != 0:
        raise RuntimeError(f"ComfyUI did not start (comfy_env.sh start exit {started.returncode}):\n{started.stderr}")
    try:
        listed = _env_script("env", env)
        assert listed.returncode == 0, f"comfy_env.sh env failed:\n{listed.stderr}"
        settings = dict(shlex.split(line)[0].split("=", 1) for line in listed.stdout.splitlines())
        # The pid file of comfy_env.sh names the server process itself (started with exec setsid).
        yield ReliabilityServer(url=settings["COMFY_URL"], log_path=Path(settings["COMFY_LOG"]),
                                pack_name=settings["COMFY_PACK_NAME"], models_dir=models_dir,
                                pid=int((root / "instance" / "server.pid").read_text()))
    finally:
        stopped = _env_script("stop", env)
        assert stopped.returncode == 0, f"comfy_env.sh stop failed:\n{stopped.stderr}"
