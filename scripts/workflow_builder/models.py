"""The top-level ``models`` list of a UI workflow: the official files its loaders select, with their
download address, so the frontend can tell which are missing and where to get them.

The frontend compares each ``name`` with the files ComfyUI lists for ``directory`` (weights only:
``/experiment/models/lance`` shows ``Lance_3B/model.safetensors``, not the json files beside it), so only
weight files are listed. The loader's download_missing option fetches a whole checkpoint folder.
"""
from __future__ import annotations

from pathlib import Path

from lance_model.checkpoint import (HF_REPO_URL, LANCE_WEIGHT_FILES, VIT_FOLDER_NAME, VIT_WEIGHTS,
                                    variant_from_folder_name)

from .graph import ResolvedNode

HF_RESOLVE = HF_REPO_URL + "/resolve/main/"
LANCE_FOLDER_KEY = "lance"
VAE_FOLDER_KEY = "vae"
# Nodes that run the vision tower, which the image checkpoint keeps in a separate folder.
VISION_NODES = frozenset({"LanceEditEncode", "LanceCaptioner"})


def _entry(name: str, directory: str) -> dict:
    return {"name": name, "url": HF_RESOLVE + name, "directory": directory}


def _checkpoint_files(folder: str, needs_vision: bool) -> list[dict]:
    files = [_entry(f"{folder}/{LANCE_WEIGHT_FILES[0]}", LANCE_FOLDER_KEY)]
    # The video checkpoint bundles its vision tower; the image checkpoint reads the separate one.
    if needs_vision and variant_from_folder_name(Path(folder)) != "video":
        files.append(_entry(f"{VIT_FOLDER_NAME}/{VIT_WEIGHTS}", LANCE_FOLDER_KEY))
    return files


def official_models(resolved: list[ResolvedNode]) -> list[dict]:
    needs_vision = any(node.schema.node_type in VISION_NODES for node in resolved)
    models: list[dict] = []
    for node in resolved:
        if node.schema.node_type == "LanceCheckpointLoader":
            found = _checkpoint_files(node.widgets["checkpoint"], needs_vision)
        elif node.schema.node_type == "VAELoader":
            found = [_entry(node.widgets["vae_name"], VAE_FOLDER_KEY)]
        else:
            continue
        models += [entry for entry in found if entry not in models]
    return models
