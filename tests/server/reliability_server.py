"""A private ComfyUI server for the reliability tests, and what they read from it.

Unlike the shared ``comfy_server`` it gets its own model folders (the tests put broken files there
without disturbing other tests' combo lists), can load test-only node packs (``reliability_pack``,
``narrow_vae_pack``) through an extra ``custom_nodes`` path, and exposes its process id, so the tests
can read its resident memory.
"""
from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from comfy_client import ComfyClient
from comfy_env_server import INSTANCE_FOLDER, comfy_env_server
from fixtures_tiny import TINY_SEED
from reliability_graphs import link_models

from lance_model.tiny import TinyModels, write_tiny_checkpoint

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


@contextmanager
def reliability_server(root: Path, packs: tuple[Path, ...] = ()) -> Iterator[ReliabilityServer]:
    """Start a ComfyUI on a free port whose ``lance`` and ``vae`` model folders are ``root/models/...``
    (created empty), with the test-only node ``packs`` besides the Lance pack; stop it on exit."""
    extra_paths = {}
    if packs:
        custom_nodes = root / "custom_nodes"
        custom_nodes.mkdir()
        for pack in packs:
            (custom_nodes / pack.name).symlink_to(pack, target_is_directory=True)
        extra_paths["custom_nodes"] = custom_nodes
    with comfy_env_server(root, extra_paths) as client:
        # The pid file of comfy_env.sh names the server process itself (started with exec setsid).
        pid = int((root / INSTANCE_FOLDER / "server.pid").read_text())
        yield ReliabilityServer(**dataclasses.asdict(client), pid=pid)


@contextmanager
def tiny_reliability_server(tmp_path_factory, name: str) -> Iterator[tuple[ReliabilityServer, TinyModels]]:
    """A reliability server with both test-only packs, serving a tiny model set whose VAE has the narrow
    widths (``NARROW_VAE_PACK`` lets ComfyUI's VAELoader build it); yields the server and that set."""
    with reliability_server(tmp_path_factory.mktemp(name), packs=(RELIABILITY_PACK, NARROW_VAE_PACK)) as running:
        models = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_models"), seed=TINY_SEED, vae_widths="tiny")
        link_models(models, running.models_dir)
        yield running, models
