"""The pack's ComfyUI extension: hands ComfyUI the V3 node classes of the modules in this folder.

Only the root ``comfy_entrypoint`` imports this package, when ComfyUI calls it; ``lance_model``
never does, so the model code stays usable without ``comfy_api``.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

# Every node module of this folder adds its io.ComfyNode classes here.
NODE_CLASSES: list[type[io.ComfyNode]] = []


class LanceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


# Each node module appends its classes to NODE_CLASSES when imported (after the list exists).
from . import captioner, edit_encode, latents, loader, sampler, text_encode  # noqa: E402,F401
