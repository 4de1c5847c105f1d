"""ComfyUI's ``lance`` model folder: registration and what it holds.

Lance ships as folders (``Lance_3B/``, ``Lance_3B_Video/``, ``Qwen2.5-VL-ViT/``), not single files, so
the folders are listed here instead of through ``folder_paths.get_filename_list``. Every folder that
ComfyUI knows under the key ``lance`` is searched: ``models/lance`` and any path an
``extra_model_paths.yaml`` adds.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..lance_model.checkpoint import IMAGE_FOLDER_NAME, VIDEO_FOLDER_SUFFIX, VIT_FOLDER_NAME, VIT_WEIGHTS, \
    ModelsFolder

FOLDER_KEY = "lance"
# Always offered, so a fresh install can select them and download them (download_missing).
OFFICIAL_CHECKPOINTS = (IMAGE_FOLDER_NAME, IMAGE_FOLDER_NAME + VIDEO_FOLDER_SUFFIX)


def _folder_paths():
    try:
        return importlib.import_module("folder_paths")
    except ImportError:  # not inside ComfyUI (e.g. the module is imported by a tool)
        return None


def register_model_folder() -> None:
    """Make ``models/lance`` a model folder, keeping paths an extra_model_paths.yaml registered first."""
    folder_paths = _folder_paths()
    if folder_paths is None or not hasattr(folder_paths, "add_model_folder_path"):
        return
    models_dir = getattr(folder_paths, "models_dir", None)
    if models_dir is not None:
        folder_paths.add_model_folder_path(FOLDER_KEY, os.path.join(models_dir, FOLDER_KEY))


def lance_roots() -> list[Path]:
    """The ``lance`` model folders, in ComfyUI's search order."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return []
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_KEY)]
    except KeyError:
        return []


def checkpoint_names() -> list[str]:
    """The official names, then every other Lance folder found (by content, so renamed copies show)."""
    found = {folder.name for root in lance_roots() for folder in ModelsFolder.find(root).lance_folders}
    return list(OFFICIAL_CHECKPOINTS) + sorted(found - set(OFFICIAL_CHECKPOINTS))


def vision_tower_names() -> list[str]:
    """Folders holding a separate vision tower (``vit.safetensors``), official name first."""
    found = {p.name for root in lance_roots() if root.is_dir() for p in root.iterdir()
             if p.is_dir() and (p / VIT_WEIGHTS).is_file()}
    return sorted(found, key=lambda name: (name != VIT_FOLDER_NAME, name))


def _outside_error(name: str) -> str | None:
    """Why ``name`` is no folder directly inside a model folder (a prompt posted to the API may carry any
    string, and ComfyUI 0.3.75 does not check V3 combo values against their options)."""
    if not name or Path(name).name != name or name in (".", ".."):
        return (f"'{name}' is not a folder name: Lance loads only folders directly inside the lance model folders "
                f"({describe_roots()}); pick one of the listed names")
    return None


def name_error(field: str, name: str | None, listed: list[str]) -> str | None:
    """For ``validate_inputs``: ``name`` must be one of the ``listed`` folder names."""
    if name is None or name in listed:
        return None
    return _outside_error(name) or (f"{field} '{name}' is not in the lance model folders ({describe_roots()}); pick "
                                    f"one of: {', '.join(listed)}")


def find_folder(name: str) -> Path | None:
    """The first ``lance`` folder holding a subfolder ``name``; refuses names reaching outside them."""
    outside = _outside_error(name)
    if outside:
        raise ValueError(outside)
    return next((root / name for root in lance_roots() if (root / name).is_dir()), None)


def describe_roots() -> str:
    roots = lance_roots()
    return ", ".join(str(r) for r in roots) if roots else f"no '{FOLDER_KEY}' model folder is registered"
