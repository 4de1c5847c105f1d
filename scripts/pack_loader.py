"""Import the repository as a ComfyUI custom-node package, in-process, the way ComfyUI does.

ComfyUI loads a custom-node folder as a package named after the folder; the pack's own ``nodes``
package is only ever reached through that package (ComfyUI owns the top-level name ``nodes``).
ComfyUI itself must be importable first (``lance_model.comfy_lookup`` finds it via ``COMFYUI_PATH``).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from lance_model.comfy_lookup import import_comfy_module

REPO_ROOT = Path(__file__).resolve().parents[1]


def pack_module(package: str, name: str = ""):
    """``<package>.<name>`` (e.g. ``nodes.sampler``), importing ComfyUI and the pack as ``package`` on first use."""
    if package not in sys.modules:
        import_comfy_module("comfy_api.latest")
        spec = importlib.util.spec_from_file_location(package, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[package] = pack
        spec.loader.exec_module(pack)
    return importlib.import_module(f"{package}.{name}" if name else package)


def node_classes(package: str) -> dict:
    """The pack's node classes by node id."""
    return {cls.GET_SCHEMA().node_id: cls for cls in pack_module(package, "nodes").NODE_CLASSES}
