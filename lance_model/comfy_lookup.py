"""Find ComfyUI's ``comfy`` package without importing any node or server code.

Inside a running ComfyUI it is already importable. Outside (tests, the command line) the
``COMFYUI_PATH`` environment variable names a ComfyUI checkout whose folder is put on ``sys.path``.
"""
from __future__ import annotations

import importlib
import os
import sys


class ComfyNotFound(ImportError):
    pass


def import_comfy_module(name: str):
    """Import ``comfy.<something>`` (e.g. ``comfy.ldm.wan.vae2_2``), locating ComfyUI if needed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as first:
        if not (first.name or "").startswith("comfy"):
            raise
        root = os.environ.get("COMFYUI_PATH")
        if not root:
            raise ComfyNotFound(
                f"cannot import {name}: ComfyUI's 'comfy' package is not importable. Run inside ComfyUI or set "
                "COMFYUI_PATH to a ComfyUI folder (the test environment's scripts/comfy_env.sh prints it).") from None
        if not os.path.isfile(os.path.join(root, "comfy", "__init__.py")) and not os.path.isdir(
                os.path.join(root, "comfy")):
            raise ComfyNotFound(f"COMFYUI_PATH={root} does not contain a 'comfy' package") from None
        if root not in sys.path:
            sys.path.insert(0, root)
        _configure_standalone_comfy()
        return importlib.import_module(name)


def _configure_standalone_comfy():
    """Outside the server nobody parsed ComfyUI's command line; on a machine without CUDA its
    memory manager would fail at import unless told to run on the CPU."""
    import torch

    cli_args = importlib.import_module("comfy.cli_args")
    if not torch.cuda.is_available():
        cli_args.args.cpu = True
