"""In-process access to the node pack for the ``test_nodes_*`` unit tests.

ComfyUI imports a custom-node folder as a package named after the folder; here the repository is
imported the same way under ``PACK_NAME`` (ComfyUI itself owns the top-level name ``nodes``, so the
pack's ``nodes`` package is only ever reached through the pack). ComfyUI comes from ``COMFYUI_PATH``
and runs on the CPU.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lance_model.comfy_lookup import import_comfy_module

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import pack_loader  # noqa: E402

PACK_NAME = "lance_pack_under_test"


def pack_module(name: str = ""):
    """``<pack>.<name>`` (e.g. ``nodes.sampler``), importing ComfyUI and the pack on first use."""
    return pack_loader.pack_module(PACK_NAME, name)


def node_classes() -> dict:
    return pack_loader.node_classes(PACK_NAME)


def run_node(node_id: str, **inputs):
    """Execute a node the way ComfyUI does (validate_inputs first); returns the NodeOutput."""
    cls = node_classes()[node_id]
    if "validate_inputs" in cls.__dict__:
        wanted = inspect.signature(cls.validate_inputs).parameters
        verdict = cls.validate_inputs(**{name: inputs.get(name) for name in wanted})
        if verdict is not True:
            raise ValueError(f"{node_id} validation: {verdict}")
    return cls.execute(**inputs)


class MemoryRequests:
    """Records every ``load_models_gpu`` call as the list of patchers it named (then lets it run)."""

    def __init__(self):
        self.calls: list[list] = []

    def named(self, parts: dict) -> list[list[str]]:
        """The calls as part names, given ``{name: patcher}``; unknown patchers show as their class name."""
        names = {id(p): n for n, p in parts.items()}
        return [[names.get(id(p), type(p.model).__name__) for p in call] for call in self.calls]


@pytest.fixture
def memory_requests(monkeypatch) -> MemoryRequests:
    manager = import_comfy_module("comfy.model_management")
    original = manager.load_models_gpu
    record = MemoryRequests()

    def recording(models, *args, **kwargs):
        record.calls.append(list(models))
        return original(models, *args, **kwargs)

    monkeypatch.setattr(manager, "load_models_gpu", recording)
    return record


@contextmanager
def comfy_builds_vae_widths(dim: int, dec_dim: int):
    """ComfyUI's VAE loader always builds the released Wan 2.2 widths; the tiny test VAE is narrower."""
    vae2_2 = import_comfy_module("comfy.ldm.wan.vae2_2")
    full_size = vae2_2.WanVAE
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae2_2, "WanVAE", lambda **config: full_size(**{**config, "dim": dim, "dec_dim": dec_dim}))
        yield


def native_vae(vae_file: Path):
    """What ComfyUI's Load VAE node returns for ``vae_file`` (a ``comfy.sd.VAE``)."""
    from lance_model.vae import wan22_widths

    state_dict = torch.load(vae_file, weights_only=True)
    with comfy_builds_vae_widths(*wan22_widths(state_dict)):
        return import_comfy_module("comfy.sd").VAE(sd=state_dict)


def use_lance_folders(monkeypatch, *roots: Path) -> None:
    """Make ``roots`` ComfyUI's ``lance`` model folders for one test (what extra_model_paths.yaml does)."""
    pack_module("nodes")
    folder_paths = importlib.import_module("folder_paths")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lance", ([str(r) for r in roots], set()))


def load_model(checkpoint: str, weight_dtype: str = "default", attention: str = "auto", vision_tower: str = "auto",
               download_missing: bool = False):
    """The LANCE_MODEL that Lance Checkpoint Loader returns."""
    return run_node("LanceCheckpointLoader", checkpoint=checkpoint, weight_dtype=weight_dtype, attention=attention,
                    vision_tower=vision_tower, download_missing=download_missing).args[0]


@pytest.fixture
def tiny_folders(monkeypatch, tiny_checkpoint):
    """The session's tiny model set as ComfyUI's ``lance`` model folder for one test; returns the set."""
    use_lance_folders(monkeypatch, tiny_checkpoint.root)
    return tiny_checkpoint


@pytest.fixture(scope="module")
def vae(tiny_checkpoint):
    """What Load VAE returns for the tiny model set's VAE, built once per test module."""
    return native_vae(tiny_checkpoint.vae)


def set_progress_hook(monkeypatch, hook) -> None:
    """Send every ProgressBar update of one test to ``hook(value, total, preview, node_id=None)``, where the
    server would send it to the browser."""
    monkeypatch.setattr(import_comfy_module("comfy.utils"), "PROGRESS_BAR_HOOK", hook)


@pytest.fixture
def ticks(monkeypatch) -> list[tuple]:
    """Every ProgressBar update as (value, total, preview), as ComfyUI's server hook would see it; this hook
    never raises."""
    seen = []
    set_progress_hook(monkeypatch, lambda value, total, preview, node_id=None: seen.append((value, total, preview)))
    return seen
