"""API-format prompts for the server tests, built node by node."""
from __future__ import annotations

from lance_model.checkpoint import IMAGE_FOLDER_NAME, VAE_FILE_NAME


class ApiGraph:
    """An API-format prompt under construction; ``add`` returns the new node's id, the loaders their first
    output as an input link (``[node id, 0]``)."""

    def __init__(self):
        self.prompt: dict = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def loader(self, checkpoint: str = IMAGE_FOLDER_NAME, vision_tower: str = "auto") -> list:
        return [self.add("LanceCheckpointLoader", checkpoint=checkpoint, weight_dtype="default", attention="auto",
                         vision_tower=vision_tower, download_missing=False), 0]

    def vae(self, name: str = VAE_FILE_NAME) -> list:
        return [self.add("VAELoader", vae_name=name), 0]
